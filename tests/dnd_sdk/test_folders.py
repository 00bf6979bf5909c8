"""atomic_write and staged_folder: the one way files and output folders are moved into place."""
import os
from pathlib import Path

import pytest

from dnd_sdk.errors import InvalidInputError
from dnd_sdk.folders import OwnFiles, atomic_write, check_target, open_regular, staged_folder

MADE = OwnFiles("maker", "index.json", r"index\.json|model\.onnx|parts/\d+\.bin")


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


def test_force_replaces_a_folder_of_its_own_making_only(tmp_path):
    out = tmp_path / "out"
    with staged_folder(out, ours=MADE) as tmp:
        (tmp / "index.json").write_text("{}")
        (tmp / "parts").mkdir()
        (tmp / "parts" / "0.bin").write_text("old")
    with staged_folder(out, force=True, ours=MADE) as tmp:  # all of it written by the maker: replaced
        (tmp / "index.json").write_text("{}")
        (tmp / "model.onnx").write_text("new")
    assert sorted(os.listdir(out)) == ["index.json", "model.onnx"] and os.listdir(tmp_path) == ["out"]
    (out / "images").mkdir()
    (out / "images" / "000000.png").write_text("someone's")
    for ours, held in ((MADE, "images/000000.png, which maker"), (None, "images, index.json, model.onnx, which "
                                                                      "this command")):  # None: nothing is its own
        with pytest.raises(InvalidInputError, match=f"out holds {held} did not write: force=True replaces only a"):
            with staged_folder(out, force=True, ours=ours) as tmp:
                (tmp / "index.json").write_text("{}")
    assert (out / "images" / "000000.png").read_text() == "someone's" and os.listdir(tmp_path) == ["out"]


@pytest.mark.parametrize("intruder", ["notes.txt", "parts/7.bin.link", "empty/", "model.onnx.fifo"])
def test_anything_the_maker_does_not_write_keeps_a_folder_from_being_replaced(tmp_path, intruder):
    out = tmp_path / "out"
    (out / "parts").mkdir(parents=True)
    (out / "index.json").write_text("{}")
    if intruder == "notes.txt":
        (out / "notes.txt").write_text("mine")
    elif intruder == "parts/7.bin.link":
        (out / "parts" / "7.bin").symlink_to(tmp_path / "elsewhere")  # a name the maker writes, but a link
    elif intruder == "empty/":
        (out / "empty").mkdir()
    else:
        os.mkfifo(out / "model.onnx")  # a name the maker writes, but a FIFO
    with pytest.raises(InvalidInputError, match="which maker did not write"):
        check_target(out, force=True, ours=MADE)
    (out / "index.json").unlink()
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "model.onnx").write_text("a person's")  # no index.json: nothing of it is the maker's
    with pytest.raises(InvalidInputError, match="plain holds model.onnx, which maker did not write"):
        check_target(tmp_path / "plain", force=True, ours=MADE)


def test_a_target_that_someone_writes_into_meanwhile_is_kept_even_with_force(tmp_path):
    out = tmp_path / "out"
    with staged_folder(out, ours=MADE) as tmp:
        (tmp / "index.json").write_text("{}")
    with pytest.raises(InvalidInputError, match="out now holds notes.txt, which maker did not write"):
        with staged_folder(out, force=True, ours=MADE) as tmp:
            (tmp / "index.json").write_text("{}")
            (out / "notes.txt").write_text("mine")
    assert sorted(os.listdir(out)) == ["index.json", "notes.txt"] and os.listdir(tmp_path) == ["out"]


def test_of_two_writers_to_one_new_target_the_second_is_refused(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(InvalidInputError, match="no longer empty and was left as it is"):
        with staged_folder(out) as second:
            (second / "b").write_text("second")
            with staged_folder(out) as first:
                (first / "a").write_text("first")
    assert os.listdir(out) == ["a"] and os.listdir(tmp_path / "new") == ["out"]


def test_a_linked_target_is_written_through_to_the_folder_it_leads_to(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    with staged_folder(tmp_path / "link") as tmp:
        (tmp / "index.json").write_text("new")
    assert (tmp_path / "link").is_symlink() and os.listdir(tmp_path / "real") == ["index.json"]
    with staged_folder(tmp_path / "link", force=True, ours=MADE) as tmp:  # replaced again through the link
        (tmp / "model.onnx").write_text("newer")
        (tmp / "index.json").write_text("{}")
    assert (tmp_path / "link").is_symlink() and sorted(os.listdir(tmp_path / "real")) == ["index.json", "model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


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


@pytest.mark.parametrize("kind", ["fifo", "link", "folder"])
def test_only_a_regular_file_is_opened_for_reading(tmp_path, kind):
    path = tmp_path / "run.json"
    if kind == "fifo":
        os.mkfifo(path)  # opening it to read would wait for a writer for ever
    elif kind == "link":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    what = {"fifo": "is a FIFO", "link": "is a link", "folder": "is a folder"}[kind]
    with pytest.raises(InvalidInputError, match=f"run.json {what}, not a file this command wrote. Remove it"):
        open_regular(path, "Remove it.")
    assert open_regular(tmp_path / "missing", "") is None
    (tmp_path / "a").write_bytes(b"xy")
    with open_regular(tmp_path / "a", "") as f:
        assert f.read() == b"xy"


def test_a_folder_index_that_is_not_a_file_lists_nothing(tmp_path):
    from dnd_sdk.model_folder.manifest import FORMAT, MANIFEST_NAME, listed_intact

    assert listed_intact(tmp_path, MANIFEST_NAME, FORMAT) is None  # missing
    os.mkfifo(tmp_path / MANIFEST_NAME)  # reading it would wait for a writer for ever
    assert listed_intact(tmp_path, MANIFEST_NAME, FORMAT) is None
    os.unlink(tmp_path / MANIFEST_NAME)
    (tmp_path / MANIFEST_NAME).mkdir()
    assert listed_intact(tmp_path, MANIFEST_NAME, FORMAT) is None
