"""atomic_write and staged_folder: the one way files and output folders are moved into place."""
import os
from pathlib import Path

import pytest

from dnd_sdk.errors import InvalidInputError
from dnd_sdk.folders import atomic_write, check_target, staged_folder


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


def test_a_target_written_to_meanwhile_is_left_alone_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # empty: allowed without force
    with pytest.raises(InvalidInputError, match="was written to while the new folder was being made"):
        with staged_folder(out) as tmp:
            (tmp / "model.onnx").write_text("new")
            (out / "notes.txt").write_text("mine")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and os.listdir(out) == ["notes.txt"]
    with staged_folder(out, force=True) as tmp:  # force still replaces it
        (tmp / "model.onnx").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and os.listdir(out) == ["model.onnx"]


def test_of_two_writers_to_one_new_target_the_second_is_refused(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(InvalidInputError, match="no longer empty and was left as it is"):
        with staged_folder(out) as second:
            (second / "b").write_text("second")
            with staged_folder(out) as first:
                (first / "a").write_text("first")
    assert os.listdir(out) == ["a"] and os.listdir(tmp_path / "new") == ["out"]


def test_a_linked_target_is_replaced_and_its_folder_kept(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    with staged_folder(tmp_path / "link") as tmp:
        (tmp / "a").write_text("new")
    assert not (tmp_path / "link").is_symlink() and os.listdir(tmp_path / "link") == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"] and os.listdir(tmp_path / "real") == []


@pytest.mark.parametrize("target", [".", "..", "work"])
def test_the_current_folder_and_those_above_it_are_refused(tmp_path, monkeypatch, target):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    with pytest.raises(InvalidInputError, match="is the current folder or holds it, so it cannot be replaced"):
        with staged_folder(Path(target) if target != "work" else work, force=True):
            pass
    assert [p.name for p in tmp_path.iterdir()] == ["work"] and os.listdir(work) == ["keep.txt"]


@pytest.mark.parametrize("link_to", ["loop", "missing"])
def test_a_link_that_leads_nowhere_is_refused_up_front(tmp_path, link_to):
    (tmp_path / "loop").symlink_to(link_to)
    with pytest.raises(InvalidInputError, match="is a link that leads nowhere"):
        check_target(tmp_path / "loop", force=True)
    assert os.listdir(tmp_path) == ["loop"]
