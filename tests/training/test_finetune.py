"""Fine-tuning: train.init_from, a decoder-only tokenizer fine-tune (freeze_codes), `dnd train set-tokenizer`."""
import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from dnd_sdk.errors import CheckpointError, InvalidInputError
from dnd_training.checkpoint import load_checkpoint
from dnd_training.cli import train
from dnd_training.codes import extract_codes
from dnd_training.config import load_config
from dnd_training.data import WordImageDataset
from dnd_training.tokenizer import CODE_WEIGHTS
from dnd_training.tokenizer_file import load_tokenizer
from dnd_training.train_tokenizer import TokenizerRunConfig, train_tokenizer
from dnd_training.train_transformer import TransformerRunConfig, train_transformer

# the tokenizer of conftest's tiny checkpoint: 16x32 images, a 2x4 grid of depth-2 codes from 64
DATA = ["data.height=16", "data.width=32", "data.num_classes=4"]
TINY_TOKENIZER = "tokenizer={ch: 16, ch_mult: [1, 2, 2, 2], embed_dim: 8, codebook_size: 64, depth: 2}"


def tokenizer_run(start, out, *extra):
    return load_config(TokenizerRunConfig, None, [
        TINY_TOKENIZER, *DATA, f"train.init_from={start}", "train.steps=30", "train.batch_size=8", "train.lr=2e-3",
        "train.warmup_steps=2", "train.log_every=5", "train.ckpt_every=30", "train.sample_every=0",
        "train.num_threads=1", f"train.out_dir={out}", *extra])


@pytest.fixture(scope="module")
def decoder_tuned(make_checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finetune")
    start = make_checkpoint(tmp / "start.pt", seed=3)
    return start, train_tokenizer(tokenizer_run(start, tmp / "tok", "freeze_codes=true")), tmp


def test_freeze_codes_trains_the_decoder_only(decoder_tuned):
    start, tuned, tmp = decoder_tuned
    before, after = load_checkpoint(start).tokenizer, load_tokenizer(tuned)[0].state_dict()
    fixed = [k for k in after if k.startswith(CODE_WEIGHTS) or k.startswith("quantizer.")]
    assert fixed and all(torch.equal(after[k], before[k]) for k in fixed)  # EMA statistics too
    assert not torch.equal(after["decoder.conv_out.weight"], before["decoder.conv_out.weight"])
    log = [json.loads(line) for line in (tmp / "tok" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss_recon"] < log[0]["loss_recon"]
    words = WordImageDataset(["cat", "dog"], "clean", seed=9, length=4, height=16, width=32)
    images = torch.stack([words[i][0] for i in range(len(words))])
    old = load_checkpoint(start).build_tokenizer()
    assert torch.equal(load_tokenizer(tuned)[0].encode(images), old.encode(images))


def test_set_tokenizer_takes_a_decoder_fine_tune_only(decoder_tuned, tmp_path):
    start, tuned, tmp = decoder_tuned
    path = tmp_path / "checkpoint.pt"
    shutil.copy(start, path)
    result = CliRunner().invoke(train, ["set-tokenizer", str(path), str(tuned)])
    assert result.exit_code == 0, result.output
    before, after = load_checkpoint(start), load_checkpoint(path)
    assert all(torch.equal(v, before.model[k]) for k, v in after.model.items())
    tuned_state = load_tokenizer(tuned)[0].state_dict()
    assert all(torch.equal(v, tuned_state[k]) for k, v in after.tokenizer.items())
    assert after.meta["tokenizer_from"] == str(tuned)

    # a full fine-tune moves the encoder and codebook: its codes are not the ones the transformer learned
    moved = train_tokenizer(tokenizer_run(start, tmp_path / "full", "train.steps=2"))
    untouched = path.read_bytes()
    refused = CliRunner().invoke(train, ["set-tokenizer", str(path), str(moved)])
    assert refused.exit_code == 1 and "freeze_codes" in refused.output
    other_size = train_tokenizer(load_config(TokenizerRunConfig, None, [
        TINY_TOKENIZER, "data.height=32", "data.width=32", "data.num_classes=4", "train.steps=1",
        "train.batch_size=2", "train.sample_every=0", f"train.out_dir={tmp_path / 'other'}"]))
    mismatch = CliRunner().invoke(train, ["set-tokenizer", str(path), str(other_size)])
    assert mismatch.exit_code == 1 and "config differs" in mismatch.output
    assert path.read_bytes() == untouched


def test_resume_needs_the_same_trainable_parameters(decoder_tuned, tmp_path):
    start, _, _ = decoder_tuned
    train_tokenizer(tokenizer_run(start, tmp_path / "t", "freeze_codes=true", "train.ckpt_every=5"), stop_at=5)
    with pytest.raises(CheckpointError, match="freeze_codes"):
        train_tokenizer(tokenizer_run(start, tmp_path / "t", "train.ckpt_every=5"), resume=True)


def test_init_from_must_match_the_architecture(decoder_tuned, tmp_path):
    start, _, _ = decoder_tuned
    with pytest.raises(InvalidInputError, match=r"'ch': \(32, 16\)"):
        train_tokenizer(tokenizer_run(start, tmp_path / "t", "tokenizer.ch=32"))
    with pytest.raises(InvalidInputError, match="freeze_codes"):
        train_tokenizer(load_config(TokenizerRunConfig, None, [TINY_TOKENIZER, *DATA, "freeze_codes=true"]))


@pytest.mark.slow
def test_transformer_starts_from_init_from(decoder_tuned, tmp_path):
    start, tuned, _ = decoder_tuned
    # the start checkpoint's classes (conftest's tiny labels), rendered at its tokenizer's size
    codes = [f"codes.path={tmp_path / 'codes.npz'}", f"codes.tokenizer={start}", "codes.variants=2",
             "codes.data.height=16", "codes.data.width=32", "codes.data.words=[cat, dog, bird, fish]"]
    base = [*codes, "model_preset=tiny", f"train.init_from={start}", "train.steps=1", "train.batch_size=4",
            "train.lr=1e-12", "train.warmup_steps=0", "train.sample_every=0", "train.num_threads=1"]
    extract_codes(load_config(TransformerRunConfig, None, codes).codes, progress=False)
    out = train_transformer(load_config(TransformerRunConfig, None, base + [f"train.out_dir={tmp_path / 'tr'}"]))
    # one step at a vanishing learning rate: the weights are the ones it started from
    expected, got = load_checkpoint(start).model, load_checkpoint(out).model
    assert all(torch.allclose(got[k], expected[k], atol=1e-6) for k in expected)
    # the decoder fine-tune makes the same codes, so the same start is fine with it
    decoder = train_transformer(load_config(TransformerRunConfig, None, base + [
        f"codes.tokenizer={tuned}", f"train.out_dir={tmp_path / 'tr2'}"]))
    assert all(torch.allclose(load_checkpoint(decoder).model[k], expected[k], atol=1e-6) for k in expected)

    def refused(*extra):
        with pytest.raises(InvalidInputError) as e:
            train_transformer(load_config(TransformerRunConfig, None, base + [*extra, f"train.out_dir={tmp_path / 'x'}"]))
        return str(e.value)

    assert "'dim': (64, 32)" in refused("model.dim=64")
    moved = train_tokenizer(tokenizer_run(start, tmp_path / "moved", "train.steps=2"))
    assert "other codes" in refused(f"codes.tokenizer={moved}")
    extract_codes(load_config(TransformerRunConfig, None, [*codes[1:], f"codes.path={tmp_path / 'words.npz'}",
                                                           "codes.data.words=[fish, dog, bird, cat]"]).codes, progress=False)
    assert "same classes" in refused(f"codes.path={tmp_path / 'words.npz'}")
