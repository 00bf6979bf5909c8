"""A run folder holds one run: a second start is refused without --resume or --force, and a refused
start (or a --resume of nothing) leaves the folder as it was."""
import json

import pytest
from click.testing import CliRunner

from dnd_training.cli import train

TOKENIZER = ["tokenizer={ch: 8, ch_mult: [1, 2, 2, 2], embed_dim: 8, codebook_size: 16, depth: 2}",
             "data.height=16", "data.width=64", "data.num_classes=4", "train.batch_size=4", "train.warmup_steps=1",
             "train.log_every=1", "train.sample_every=0", "train.num_threads=1", "train.precision=fp32"]


def tokenizer_run(out, *flags, steps=2):
    args = ["tokenizer", *sum((["--set", o] for o in TOKENIZER), []), "--steps", str(steps), "--out", str(out), *flags]
    return CliRunner().invoke(train, args)


def files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tok"
    result = tokenizer_run(out)
    assert result.exit_code == 0, result.output
    return out


def test_a_second_run_into_a_run_folder_is_refused(first_run):
    before = files(first_run)
    result = tokenizer_run(first_run, steps=3)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{first_run} already holds a run (config.yaml, train_state.pt, log.jsonl, tokenizer.pt)" in result.output
    assert "--resume to continue it, --force to start over" in result.output and "--out" in result.output
    assert files(first_run) == before  # nothing overwritten, nothing appended


def test_any_run_file_makes_a_run_folder(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    result = tokenizer_run(tmp_path)
    assert result.exit_code == 1 and "already holds a run (log.jsonl)" in result.output


def test_force_starts_over(first_run, tmp_path):
    out = tmp_path / "tok"
    assert tokenizer_run(out, steps=3).exit_code == 0
    (out / "notes.txt").write_text("a person's file")
    result = tokenizer_run(out, "--force", steps=2)
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]  # the old run's three lines are gone, not mixed in
    assert (out / "notes.txt").read_text() == "a person's file"  # --force deletes run files only


def test_resume_of_a_run_that_does_not_exist_leaves_nothing(tmp_path):
    out = tmp_path / "never"
    result = tokenizer_run(out, "--resume")
    assert result.exit_code == 1 and "no training state" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_resume_and_force_together_are_refused(first_run):
    result = tokenizer_run(first_run, "--resume", "--force")
    assert result.exit_code == 1 and "give one of them" in result.output
