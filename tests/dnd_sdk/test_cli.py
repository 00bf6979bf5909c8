"""The `dnd` command line: registry, user errors without tracebacks, and resume after SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from dnd_sdk.cli import main as cli_main
from dnd_sdk.cli.main import cli

DND = [sys.executable, "-c", "from dnd_sdk.cli.main import main; main()"]


def tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_help_lists_commands_from_the_registry(monkeypatch):
    monkeypatch.setitem(cli_main.COMMANDS, "train", ("dnd_training.not_written_yet:train", "Train a model.", "train"))
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("generate", "info", "train"):
        assert f"  {name} " in result.output
    missing = CliRunner().invoke(cli, ["train", "--steps", "3"])
    assert missing.exit_code == 1 and "pip install 'dnd-sdk[train]'" in missing.output


def test_info_prints_the_summary(tiny_model_dir):
    result = CliRunner().invoke(cli, ["info", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert "classes:  4 (cat, dog, bird, fish)" in result.output and "sha256 verified" in result.output


def test_generate_writes_images_npz_and_grid(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["generate", str(tiny_model_dir), "--per-class", "2", "--out", str(out),
                                      "--npz", "--grid", "--threads", "1", "--quiet", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "8 made, 0 already there (complete) on onnxruntime-cpu" in result.output
    assert sorted(tree(out)) == [f"{i:06d}.png" for i in range(8)] + ["grid.png", "metadata.jsonl", "run.json", "samples.npz"]


@pytest.mark.parametrize("args, fragment", [
    (["--num", "4", "--labels", "cat,unicorn"], "unknown label 'unicorn'"),
    (["--num", "4", "--labels", "9"], "class id 9 is out of range"),
    (["--num", "4", "--labels", "cat," + "9" * 5000], "Error: class id 999999999999999999999999999...99999"),
    # errors name the flags the user typed, not the Python arguments behind them
    (["--num", "4", "--temperature", "-1"], "Error: --temperature must be >= 0 (0 = greedy), got -1.0\n"),
    (["--num", "4", "--top-p", "0"], "Error: --top-p must be in (0, 1] (1 = off), got 0.0\n"),
    (["--num", "4", "--top-k", "100"], "Error: --top-k must be an integer in [0, 64], got 100\n"),
    (["--num", "4", "--cfg-scale", "-2"], "Error: --cfg-scale must be in [0, 100] (1 = no guidance), got -2.0\n"),
    (["--num", "4", "--cfg-scale", "1e308"], "Error: --cfg-scale must be in [0, 100]"),
    (["--num", "0"], "Error: --num must be an integer in [1, 10000000], got 0\n"),
    (["--num", "99999999999999999999"], "Error: --num must be an integer in [1, 10000000], got 99999999999999999999\n"),
    (["--num", "4", "--batch-size", "0"], "Error: --batch-size must be an integer in [1, 10000000], got 0\n"),
    (["--num", "4", "--shard", "3/2"], "Error: --shard must be I/N with 0 <= I < N, got 3/2\n"),
    (["--labels", "cat", "--per-class", "2"], "Error: give --labels or --per-class, not both\n"),
    (["--per-class", "99999999"], "Error: --per-class must be an integer in [1, 2500000]"),
    (["--num", "4", "--head-temperatures", "0.5"], "Error: --head-temperatures must be a list of 2 numbers (one per depth)"),
    (["--num", "4", "--head-temperatures", "0.5,-1"], "Error: --head-temperatures must be >= 0 (0 = greedy), got -1.0\n"),
])
def test_bad_input_is_a_clean_error_and_writes_nothing(tiny_model_dir, tmp_path, args, fragment):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["generate", str(tiny_model_dir), "--out", str(out), "--quiet", *args])
    assert result.exit_code == 1, result.output
    assert fragment in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_head_temperatures_flag_samples_what_the_api_samples(tiny_model_dir, gen, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["generate", str(tiny_model_dir), "--num", "3", "--out", str(out), "--npz",
                                      "--head-temperatures", "0,1.5", "--threads", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    codes = gen.sample_codes(num=3, seed=0, head_temperatures=[0.0, 1.5])
    assert not np.array_equal(codes, gen.sample_codes(num=3, seed=0))  # the flag changes the sample
    expected = np.stack([np.asarray(im) for im in gen.decode(codes)])
    np.testing.assert_array_equal(np.load(out / "samples.npz")["arr_0"], expected)
    assert json.loads((out / "run.json").read_text())["sampling"]["head_temperatures"] == [0.0, 1.5]


def test_not_a_model_folder_exits_1_without_traceback(tmp_path):
    proc = subprocess.run([*DND, "info", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "no manifest.json here" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_output(tiny_model_dir, tmp_path):
    args = ["generate", str(tiny_model_dir), "--num", "120", "--batch-size", "1", "--seed", "9",
            "--threads", "1", "--npz", "--grid", "--quiet"]
    reference, out = tmp_path / "reference", tmp_path / "killed"
    assert CliRunner().invoke(cli, [*args, "--out", str(reference)]).exit_code == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for kills in range(2):  # kill twice at different points, resuming each time
        proc = subprocess.Popen([*DND, *args, "--out", str(out)], env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(list(out.glob("*.png"))) < 8 + 12 * kills and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL  # it was killed mid-run, not finished
    assert not (out / "metadata.jsonl").exists()

    resumed = subprocess.run([*DND, *args, "--out", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "already there (complete)" in resumed.stdout
    assert tree(out) == tree(reference)


def test_concurrent_shards_in_one_folder_equal_a_single_run(tiny_model_dir, tmp_path):
    args = ["generate", str(tiny_model_dir), "--num", "24", "--seed", "2", "--threads", "1", "--npz", "--quiet"]
    reference, out = tmp_path / "reference", tmp_path / "shared"
    assert CliRunner().invoke(cli, [*args, "--out", str(reference)]).exit_code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*DND, *args, "--batch-size", "2", "--shard", f"{i}/2", "--out", str(out)], env=env,
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert all("12 made" in o for o in outputs)
    assert tree(out) == tree(reference)


@pytest.mark.parametrize("args, fragment", [
    (["--num", "4", "--no-captions"], "--captions/--no-captions apply to grid.png: add --grid"),
    (["--num", "4", "--labels", "cat,,dog"], "Invalid value for '--labels': empty entry in 'cat,,dog'"),
    (["--num", "4", "--labels", "cat,"], "empty entry"),
    (["--num", "1e13"], "Invalid value for '--num': '1e13' is not a valid integer"),
    (["--num", "4", "--head-temperatures", "0.5,hot"], "Invalid value for '--head-temperatures': '0.5,hot' is not a"),
])
def test_malformed_flags_are_usage_errors_that_write_nothing(tiny_model_dir, tmp_path, args, fragment):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["generate", str(tiny_model_dir), "--out", str(out), "--quiet", *args])
    assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_messages_quote_paths_and_prose_as_typed(tiny_model_dir, tmp_path):
    out = tmp_path / "labels" / "out"  # holds the names of two flags
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["generate", str(tiny_model_dir), "--num", "2", "--out", str(out), "--quiet"])
    assert result.exit_code == 1
    assert f"Error: {out} exists and was not made by `dnd generate`" in result.output
    assert "choose a new or empty --out folder." in result.output
    unknown = CliRunner().invoke(cli, ["generate", str(tiny_model_dir), "--labels", "unicorn", "--out", str(out)])
    assert "this model knows 4 labels (cat, dog, bird, fish)" in unknown.output  # prose, not a flag


def test_only_marked_argument_names_become_flags():
    import click

    from dnd_sdk.cli.flags import in_flags
    from dnd_sdk.errors import InvalidInputError, arg

    command = click.Command("c", params=[click.Option(["-o", "--out"]), click.Option(["--per-class", "per_class"]),
                                         click.Argument(["model"]), click.Option(["--force"], is_flag=True)])
    error = InvalidInputError(f"/data/per_class/out is full; lower {arg('per_class')}, pass {arg('force')}=True, "
                              f"fix {arg('model')} or choose another {arg('out')}")
    assert str(error) == "/data/per_class/out is full; lower per_class, pass force=True, fix model or choose another out"
    assert in_flags(error, command) == ("/data/per_class/out is full; lower --per-class, pass --force, fix MODEL or "
                                        "choose another --out")
    assert error.names == ("per_class", "force", "model", "out")
    # the helpers that open a message with the argument's name (dnd_sdk.arguments) keep their flag
    legacy = InvalidInputError("out must be a folder, not out/x", ["out"])
    assert in_flags(legacy, command) == "--out must be a folder, not out/x"


def test_ctrl_c_says_how_many_images_are_done_and_how_to_resume(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    args = [*DND, "generate", str(tiny_model_dir), "--num", "400", "--batch-size", "1", "--threads", "1", "--quiet",
            "--out", str(out)]
    proc = subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list(out.glob("*.png"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=60)[1]
    done = len(list(out.glob("*.png")))
    assert proc.returncode == 130 and 5 <= done < 400, stderr
    assert f"Interrupted: {done} of 400 images are done in {out}. Run the same command again" in stderr
    assert "Traceback" not in stderr and "Aborted!" not in stderr


def test_info_summarises_a_checkpoint(tiny_checkpoint, exported_tiny_model_dir):
    from dnd_training.checkpoint import load_checkpoint
    ckpt = load_checkpoint(tiny_checkpoint)
    parameters = sum(p.numel() for p in ckpt.build_model().parameters())
    result = CliRunner().invoke(cli, ["info", str(tiny_checkpoint)])
    assert result.exit_code == 0, result.output
    assert "classes:   4 (cat, dog, bird, fish); guidance available (null class)" in result.output
    assert f"vocab 64; {parameters / 1e6:.2f} M parameters" in result.output
    assert "sampler:   cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0\n" in result.output
    assert f"export:    dnd-export {tiny_checkpoint} -o DIR" in result.output
    # and the exported folder names the checkpoint it came from
    folder = CliRunner().invoke(cli, ["info", str(exported_tiny_model_dir)])
    assert f"exported from: {tiny_checkpoint.resolve()} (sha256 " in folder.output


def test_info_on_a_file_that_is_no_checkpoint_is_a_clean_error(tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "notes.pt")])
    assert result.exit_code == 1 and "Traceback" not in result.output and "notes.pt" in result.output


def all_commands():
    """(name, click command) of every command of dnd, dnd-export and dnd-build, subcommands included."""
    import click

    pytest.importorskip("torch", reason="dnd-export and dnd train load their commands from the torch extras")

    from dnd_engines.cli import main as build
    from dnd_export.cli import main as export

    def walk(name, command):
        if isinstance(command, click.Group):
            for sub in command.list_commands(None):
                yield from walk(f"{name} {sub}", command.get_command(None, sub))
        else:
            yield name, command
    yield from walk("dnd", cli)
    yield from walk("dnd-export", export)
    yield from walk("dnd-build", build)


def test_flags_agree_across_commands():
    import click
    outputs = {}
    for name, command in all_commands():
        for p in command.params:
            if not isinstance(p, click.Option):
                continue
            if "-o" in p.opts:  # one meaning per command: the short form of its output option
                assert p.opts in (["-o", "--out"], ["-o", "--output"]), (name, p.opts)
            if "--out" in p.opts:  # a folder, always
                assert isinstance(p.type, click.Path) and not p.type.file_okay, name
                outputs[name] = "folder"
            if "--output" in p.opts:  # a file, always
                assert isinstance(p.type, click.Path) and not p.type.dir_okay, name
                outputs[name] = "file"
            assert not {"--batch", "--batch-size"} & set(p.opts) or "--batch-size" in p.opts, (name, p.opts)
    assert outputs == {"dnd generate": "folder", "dnd train tokenizer": "folder", "dnd train transformer": "folder",
                       "dnd export": "folder", "dnd import official": "file", "dnd eval ocr": "file",
                       "dnd eval sweep": "file", "dnd bench": "file", "dnd-export": "folder", "dnd-build": "folder"}
    bench = dict(all_commands())["dnd bench"]
    assert bench.params[0].name == "model" and isinstance(bench.params[0], click.Argument)  # the model comes first
