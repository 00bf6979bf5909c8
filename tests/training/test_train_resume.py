"""A run stopped at a checkpoint and resumed ends with exactly the weights of an uninterrupted run."""
import json

import pytest
import torch

from dnd_sdk.errors import CheckpointError, DndError
from dnd_training.codes import extract_codes
from dnd_training.config import load_config
from dnd_training.train_tokenizer import TokenizerRunConfig, train_tokenizer
from dnd_training.train_transformer import TransformerRunConfig, train_transformer

DATA = ["data.height=16", "data.width=64", "data.num_classes=4"]
TRAIN = ["train.batch_size=8", "train.lr=2e-3", "train.warmup_steps=4", "train.log_every=3", "train.ckpt_every=6",
         "train.sample_every=0", "train.num_threads=1"]


def tokenizer_cfg(out, *extra):
    return load_config(TokenizerRunConfig, None, [
        "tokenizer={ch: 8, ch_mult: [1, 2, 2, 2], embed_dim: 8, codebook_size: 16, depth: 2, restart_threshold: 0.5}",
        *DATA, *TRAIN, "train.steps=18", "train.weight_decay=0", f"train.out_dir={out}", *extra])


def transformer_cfg(tmp, out, *extra):
    return load_config(TransformerRunConfig, None, [
        "model_preset=tiny", "model={token_dropout_p: 0.1, resid_dropout_p: 0.1}",  # dropout: RNG must resume too
        f"codes.path={tmp / 'codes.npz'}", f"codes.tokenizer={tmp / 'a' / 'tokenizer.pt'}", "codes.variants=8",
        *("codes." + d for d in DATA), *TRAIN, "train.steps=24", "train.ema_decay=0.9", f"train.out_dir={out}", *extra])


def state(path):
    return torch.load(path, weights_only=True)


def assert_same_tensors(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_tensors(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tensors(x, y)
    else:
        assert a == b


@pytest.fixture(scope="module")
def tokenizer_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    train_tokenizer(tokenizer_cfg(tmp / "a"))  # uninterrupted
    train_tokenizer(tokenizer_cfg(tmp / "b"), stop_at=12)  # "interrupted" after the step-12 checkpoint
    assert state(tmp / "b" / "train_state.pt")["step"] == 12
    with open(tmp / "b" / "log.jsonl", "a") as f:  # a crash after step 15: logged, but never checkpointed
        f.write(json.dumps({"loss": 9.0, "step": 15}) + "\n")
    train_tokenizer(tokenizer_cfg(tmp / "b"), resume=True)
    return tmp


def test_tokenizer_resume_is_exact(tokenizer_runs):
    a, b = state(tokenizer_runs / "a" / "train_state.pt"), state(tokenizer_runs / "b" / "train_state.pt")
    assert a["step"] == b["step"] == 18
    # weights, EMA codebook buffers (moved by dead-code restarts, which draw random numbers) and optimizer
    assert_same_tensors(a["model"], b["model"])
    assert_same_tensors(a["optimizer"], b["optimizer"])
    assert_same_tensors(a["scheduler"], b["scheduler"])


def test_transformer_resume_with_ema_is_exact(tokenizer_runs):
    tmp = tokenizer_runs
    extract_codes(transformer_cfg(tmp, tmp / "t0").codes, progress=False)
    train_transformer(transformer_cfg(tmp, tmp / "ta"))
    train_transformer(transformer_cfg(tmp, tmp / "tb"), stop_at=6)
    train_transformer(transformer_cfg(tmp, tmp / "tb"), resume=True, stop_at=18)  # interrupted twice
    train_transformer(transformer_cfg(tmp, tmp / "tb"), resume=True)
    a, b = state(tmp / "ta" / "train_state.pt"), state(tmp / "tb" / "train_state.pt")
    assert a["step"] == b["step"] == 24
    assert_same_tensors(a["model"], b["model"])
    assert_same_tensors(a["ema"], b["ema"])
    assert_same_tensors(a["optimizer"], b["optimizer"])
    ca, cb = state(tmp / "ta" / "checkpoint.pt"), state(tmp / "tb" / "checkpoint.pt")
    assert_same_tensors(ca["model"], cb["model"])
    # the resumed run's log continues where the first part stopped
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (tmp / "tb" / "log.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 9, 12, 15, 18, 21, 24]


def test_resumed_log_has_each_step_once(tokenizer_runs):
    # part one logged steps 3..12 (and 15 before it "crashed"); the resumed part reruns 13..18
    records = [json.loads(line) for line in (tokenizer_runs / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(3, 19, 3)) and all(r["loss"] != 9.0 for r in records)


def test_divergence_stops_with_a_clear_error(tmp_path):
    with pytest.raises(DndError, match="training diverged.*lower train.lr"):
        train_tokenizer(tokenizer_cfg(tmp_path / "nan", "train.lr=1e30", "train.warmup_steps=1", "train.grad_clip=1e30"))


def test_resume_refuses_a_different_recipe(tokenizer_runs):
    with pytest.raises(CheckpointError, match="train.batch_size is 4"):
        train_tokenizer(tokenizer_cfg(tokenizer_runs / "b", "train.batch_size=4"), resume=True)
    with pytest.raises(CheckpointError, match="no training state"):
        train_tokenizer(tokenizer_cfg(tokenizer_runs / "fresh"), resume=True)


def test_resume_with_a_changed_model_size_names_the_settings_that_differ(tokenizer_runs):
    out = tokenizer_runs / "b"
    config = (out / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match=r"--resume: this config's model differs from the interrupted run's "
                                              r"\(ch 8 there, 16 now\); resume with the run's own settings"):
        train_tokenizer(tokenizer_cfg(out, "tokenizer.ch=16"), resume=True)
    assert (out / "config.yaml").read_text() == config  # the run's own record is kept


def test_a_state_file_from_before_settings_were_stored_is_judged_by_its_shapes(tokenizer_runs, tmp_path):
    import shutil

    from dnd_training.torch_files import atomic_torch_save

    out = tmp_path / "old"
    shutil.copytree(tokenizer_runs / "b", out)
    old = state(out / "train_state.pt")
    old.pop("model_settings", None)
    atomic_torch_save(old, out / "train_state.pt")
    with pytest.raises(CheckpointError, match=r"model differs from the interrupted run's \(encoder.conv_in.weight "
                                              r"\[8, 3, 3, 3\] there, \[16, 3, 3, 3\] now"):
        train_tokenizer(tokenizer_cfg(out, "tokenizer.ch=16"), resume=True)


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s.update(step="12"), r"damaged training-state file \(step missing or of the wrong type\)"),
    (lambda s: s.update(data=[8]), r"damaged training-state file \(data missing"),
    (lambda s: s["data"].update(batch_size="8"), r"\(data.batch_size missing or of the wrong type\)"),
    (lambda s: s.update(model=None), r"\(model missing or of the wrong type\)"),
])
def test_a_state_file_with_a_wrong_typed_value_is_one_error(tokenizer_runs, tmp_path, edit, fragment):
    import shutil

    from dnd_training.torch_files import atomic_torch_save

    out = tmp_path / "run"
    shutil.copytree(tokenizer_runs / "b", out)
    damaged = state(out / "train_state.pt")
    edit(damaged)
    atomic_torch_save(damaged, out / "train_state.pt")
    with pytest.raises(CheckpointError, match=fragment):
        train_tokenizer(tokenizer_cfg(out), resume=True)


def test_a_log_line_cut_short_by_a_kill_is_dropped_on_resume(tokenizer_runs, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tokenizer_runs / "b", out)
    with open(out / "log.jsonl", "a") as f:  # killed in the middle of writing a line, then another kind of junk
        f.write('{"loss": 0.5, "st\n[1, 2]\n')
    train_tokenizer(tokenizer_cfg(out, "train.steps=21"), resume=True)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(3, 22, 3))
