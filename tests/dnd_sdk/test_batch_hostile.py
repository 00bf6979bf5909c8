"""The batch job under hostile conditions: foreign files in the run folder, a second writer of the
same shard, a full disk and a read-only folder. Each is one typed error, and what is on disk
stays resumable to the exact files of an undisturbed run."""
import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dnd_sdk import folders
from dnd_sdk.batch import BatchJob, _shard_lock, run_batch
from dnd_sdk.cli.main import cli
from dnd_sdk.errors import InvalidInputError, OutputError

JOB = BatchJob(num=6, seed=2, batch_size=2, npz=True, grid=True)


@pytest.fixture(scope="module")
def reference(gen, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    run_batch(gen, out, JOB, progress=False)
    return out


def tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("write, found", [
    (lambda p: Image.new("RGBA", (10, 10)).save(p), "is a PNG RGBA image of 10x10"),
    (lambda p: Image.new("RGB", (10, 10)).save(p), "is a PNG RGB image of 10x10"),
    (lambda p: p.write_bytes(b""), r"is unreadable as an image \(UnidentifiedImageError\)"),
    (lambda p: p.write_text("hello"), r"is unreadable as an image \(UnidentifiedImageError\)"),
])
def test_a_foreign_file_in_the_run_folder_is_named_and_nothing_aggregated(gen, reference, tmp_path, write, found):
    out = tmp_path / "out"
    run_batch(gen, out, BatchJob(**{**JOB.__dict__, "shard": (0, 2)}), progress=False)  # half the run
    write(out / "000003.png")  # in the other shard's half
    message = f"{out / '000003.png'} {found}, not an image of this run .PNG RGB 32x16.*Delete it and rerun"
    with pytest.raises(InvalidInputError, match=message):
        run_batch(gen, out, BatchJob(**{**JOB.__dict__, "shard": (1, 2)}), progress=False)
    assert not (out / "samples.npz").exists() and not (out / "metadata.jsonl").exists()
    with pytest.raises(InvalidInputError, match=message):  # the shard that owns it finds it too
        run_batch(gen, out, JOB, progress=False)
    (out / "000003.png").unlink()
    run_batch(gen, out, JOB, progress=False)
    assert tree(out) == tree(reference)


@pytest.mark.parametrize("text", ["[1, 2]", '"x"', "null", "3", "{not json", "[" * 100_000])
def test_a_run_file_that_is_not_a_json_object_is_refused(gen, tmp_path, text):
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(InvalidInputError, match=f"{tmp_path / 'run.json'} is not a run file of `dnd generate`"):
        run_batch(gen, tmp_path, JOB, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_png_damaged_past_its_header_is_named(gen, reference, tmp_path):
    out = tmp_path / "out"
    run_batch(gen, out, BatchJob(**{**JOB.__dict__, "npz": False}), progress=False)
    data = (out / "000004.png").read_bytes()
    (out / "000004.png").write_bytes(data[: len(data) - 40])  # header intact, pixels cut short
    with pytest.raises(InvalidInputError, match=f"{out / '000004.png'} is unreadable as an image"):
        run_batch(gen, out, JOB, progress=False)
    assert not (out / "samples.npz").exists()


def test_a_truncated_png_is_never_counted_as_made(gen, reference, tmp_path):
    # no npz or grid: nothing decodes the pixels later, so the resume's own check is all that stands between a
    # PNG cut short after its header and a metadata.jsonl that lists it
    job = BatchJob(**{**JOB.__dict__, "npz": False, "grid": False})
    out = tmp_path / "out"
    run_batch(gen, out, job, progress=False)
    data = (out / "000004.png").read_bytes()
    (out / "000004.png").write_bytes(data[: len(data) // 2])
    (out / "metadata.jsonl").unlink()
    with pytest.raises(InvalidInputError, match=f"{out / '000004.png'} is unreadable as an image .*"
                                                "not an image of this run .*Delete it and rerun"):
        run_batch(gen, out, job, progress=False)
    assert not (out / "metadata.jsonl").exists()
    (out / "000004.png").write_bytes(data[:-12])  # every pixel there, but no IEND: cut short all the same
    with pytest.raises(InvalidInputError, match=f"{out / '000004.png'} is unreadable as an image"):
        run_batch(gen, out, job, progress=False)
    (out / "000004.png").unlink()
    assert run_batch(gen, out, job, progress=False).made == 1
    assert tree(out)["000004.png"] == tree(reference)["000004.png"]


def run_unless_blocked(fn, fifo):
    """fn() in a thread; a call still blocked on `fifo` after 20 s is released by writing to it, and fails."""
    import threading

    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(_outcome(fn)), daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # its reader now sees the end of the file
        thread.join(20)
        pytest.fail(f"blocked reading {fifo}")
    return outcome[0]


def _outcome(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 (handed to the test, which asserts on it)
        return e


@pytest.mark.parametrize("name", ["000001.png", "run.json"])
def test_a_fifo_in_the_run_folder_is_refused_not_waited_on(gen, tmp_path, name):
    out = tmp_path / "out"
    if name == "run.json":
        out.mkdir()  # the first file a run writes: a folder holding only it is taken for this run's
    else:
        run_batch(gen, out, BatchJob(num=2, seed=2, batch_size=2), progress=False)
        (out / name).unlink()
    os.mkfifo(out / name)
    error = run_unless_blocked(lambda: run_batch(gen, out, BatchJob(num=2, seed=2, batch_size=2), progress=False),
                               out / name)
    assert isinstance(error, InvalidInputError), error
    assert str(error).startswith(f"{out / name} is a FIFO, not a file this command wrote.")


def test_a_png_that_is_a_link_is_refused(gen, tmp_path):
    out = tmp_path / "out"
    run_batch(gen, out, BatchJob(num=2, seed=2, batch_size=2), progress=False)
    (tmp_path / "elsewhere.png").write_bytes((out / "000001.png").read_bytes())
    (out / "000001.png").unlink()
    (out / "000001.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(InvalidInputError, match="000001.png is a link, not a file this command wrote"):
        run_batch(gen, out, BatchJob(num=2, seed=2, batch_size=2), progress=False)


@pytest.mark.parametrize("where", ["model", "model/samples", "copy/samples/deeper"])
def test_images_are_never_written_inside_a_model_folder(tiny_model_dir, tmp_path, where):
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "copy")  # any model folder, not only the one sampled from
    (tmp_path / "model").symlink_to(tiny_model_dir)
    out = tmp_path / where
    result = CliRunner().invoke(cli, ["generate", str(tmp_path / "model"), "--num", "1", "--threads", "1",
                                      "--out", str(out)])
    model = os.path.realpath(tiny_model_dir) if where.startswith("model") else tmp_path / "copy"
    assert result.exit_code == 1 and result.output == (
        f"Error: {out} lies inside the model folder {model}; write the images to a folder of their own, outside "
        "it.\n")
    assert sorted(os.listdir(tiny_model_dir)) == sorted(os.listdir(tmp_path / "copy"))


def test_a_second_writer_of_the_same_shard_is_refused_and_leaves_the_first_alone(gen, reference, tmp_path):
    out = tmp_path / "out"
    run_batch(gen, out, BatchJob(**{**JOB.__dict__, "num": 6, "shard": (1, 2)}), progress=False)
    live = out / ".shard0of1-000001.png.abc.tmp"  # the first writer's file, half written
    live.write_bytes(b"partial")
    with _shard_lock(out, "shard0of1-", (0, 1)):  # the first writer holds its shard
        with pytest.raises(OutputError, match=f"another `dnd generate` is writing shard 0/1 of {out} now"):
            run_batch(gen, out, JOB, progress=False)
        assert live.exists()
    run_batch(gen, out, JOB, progress=False)  # once it is gone, its leftovers are stale
    assert tree(out) == tree(reference)


def test_two_identical_commands_at_once_end_in_one_complete_run(tiny_model_dir, reference, tmp_path):
    out = tmp_path / "out"
    command = ["dnd", "generate", str(tiny_model_dir), "--num", "6", "--seed", "2", "--batch-size", "2", "--npz",
               "--grid", "--threads", "1", "--quiet", "--out", str(out)]
    command[0] = str(Path(os.sys.executable).parent / "dnd")
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for rc, err in results:  # each either did the work or was told, in one line, that the other does it
        assert rc == 0 or (rc == 1 and "another `dnd generate` is writing shard 0/1" in err), err
        assert "Traceback" not in err
    assert tree(out) == tree(reference)


def test_a_full_disk_is_one_clean_error_and_the_rerun_finishes_exactly(gen, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_fsync, calls = os.fsync, []

    def fsync(fd):  # the disk fills up at the fourth file written
        calls.append(fd)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)
    monkeypatch.setattr(folders.os, "fsync", fsync)
    with pytest.raises(OutputError, match=f"writing {out} failed .No space left on device.; the images written so "
                                          "far are kept. Free disk space"):
        run_batch(gen, out, JOB, progress=False)
    monkeypatch.undo()
    run_batch(gen, out, JOB, progress=False)
    assert tree(out) == tree(reference)


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder this process cannot write: chmod for a normal user, a read-only mount for root."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("root here cannot mount a read-only tmpfs")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_folder_is_one_clean_cli_error(tiny_model_dir, read_only_folder):
    out = read_only_folder / "samples"
    result = CliRunner().invoke(cli, ["generate", str(tiny_model_dir), "--num", "2", "--out", str(out), "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith(f"Error: writing {out} failed (") and result.output.count("\n") == 1
    assert "choose another --out folder" in result.output


def test_grid_captions_follow_the_option(gen, tmp_path):
    def grid(captions):
        out = tmp_path / f"grid-{captions}"
        run_batch(gen, out, BatchJob(num=4, grid=True, captions=captions), progress=False)
        return np.asarray(Image.open(out / "grid.png"))
    captioned, plain = grid(None), grid(False)
    assert plain.shape == (16 + 4, 4 * 34 + 2, 3) and captioned.shape == (16 + 13 + 4, 4 * 34 + 2, 3)
    assert np.array_equal(captioned[:18], plain[:18])  # same cells, captions only below them
    strip = captioned[18:18 + 13, 2:34]
    assert (strip < 128).any() and (strip == 255).mean() > 0.5  # dark text on white


def test_shards_written_to_separate_folders_combine_as_the_readme_says(gen, reference, tmp_path):
    parts = [tmp_path / f"part{i}" for i in range(3)]
    for i, part in enumerate(parts):
        summary = run_batch(gen, part, BatchJob(**{**JOB.__dict__, "shard": (i, 3)}), progress=False)
        assert not summary.complete
    merged = tmp_path / "samples"
    merged.mkdir()
    for path in [*(p for part in parts for p in part.glob("[0-9]*.png")), parts[0] / "run.json"]:
        (merged / path.name).write_bytes(path.read_bytes())
    summary = run_batch(gen, merged, JOB, progress=False)
    assert summary.made == 0 and summary.complete
    assert tree(merged) == tree(reference)


def test_an_out_link_that_leads_nowhere_is_refused_by_name(tiny_model_dir, tmp_path):
    (tmp_path / "out").symlink_to(tmp_path / "missing")
    result = CliRunner().invoke(cli, ["generate", str(tiny_model_dir), "--num", "1", "--threads", "1", "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 1 and result.output == (
        f"Error: {tmp_path / 'out'} is a link that leads nowhere (broken, or a loop); remove it or choose another "
        "--out folder\n")
    assert os.listdir(tmp_path) == ["out"]
