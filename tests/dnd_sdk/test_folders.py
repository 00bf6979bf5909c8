"""atomic_write: the one way files are moved into place (an open file, or a name for writers that take only a path)."""
from pathlib import Path

import pytest

from dnd_sdk.folders import atomic_write


def test_a_file_appears_whole_and_leaves_no_temporary_file(tmp_path):
    atomic_write(tmp_path / "a.json", lambda f: f.write(b"{}\n"))
    atomic_write(tmp_path / "b.bin", lambda name: Path(name).write_bytes(b"xy"), to_name=True)
    assert (tmp_path / "a.json").read_bytes() == b"{}\n" and (tmp_path / "b.bin").read_bytes() == b"xy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]


@pytest.mark.parametrize("to_name", [False, True])
def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_else(tmp_path, to_name):
    (tmp_path / "a.json").write_bytes(b"old")

    def fail(target):
        Path(target).write_bytes(b"half") if to_name else target.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "a.json", fail, to_name=to_name)
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"] and (tmp_path / "a.json").read_bytes() == b"old"


def test_keep_existing_never_replaces(tmp_path):
    (tmp_path / "a.png").write_bytes(b"first")
    atomic_write(tmp_path / "a.png", lambda f: f.write(b"second"), keep_existing=True)
    assert (tmp_path / "a.png").read_bytes() == b"first" and len(list(tmp_path.iterdir())) == 1
