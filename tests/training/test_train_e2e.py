"""Tiny end to end on CPU: tokenizer -> codes -> transformer -> checkpoint -> reference sampler."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dnd_sdk.errors import InvalidInputError
from dnd_training.checkpoint import load_checkpoint
from dnd_training.cli import train
from dnd_training.codes import extract_codes, load_codes
from dnd_training.config import load_config
from dnd_training.data import WordImageDataset
from dnd_training.sampling import generate
from dnd_training.tokenizer_file import load_tokenizer
from dnd_training.train_tokenizer import TokenizerRunConfig, train_tokenizer
from dnd_training.train_transformer import TransformerRunConfig, train_transformer

DATA = ["data.height=16", "data.width=64", "data.num_classes=4"]


def tokenizer_overrides(out):
    return ["tokenizer={ch: 16, ch_mult: [1, 2, 2, 2], embed_dim: 8, codebook_size: 64, depth: 2}", *DATA,
            "train.steps=150", "train.batch_size=16", "train.lr=2e-3", "train.warmup_steps=10",
            "train.weight_decay=0", "train.log_every=10", "train.ckpt_every=50", "train.sample_every=75",
            "train.num_threads=1", f"train.out_dir={out}"]


def transformer_overrides(tmp, out):
    return ["model_preset=tiny", f"codes.path={tmp / 'codes.npz'}", f"codes.tokenizer={tmp / 'tok' / 'tokenizer.pt'}",
            "codes.variants=16", *("codes." + d for d in DATA),
            "train.steps=300", "train.batch_size=16", "train.lr=3e-3", "train.warmup_steps=20", "train.log_every=20",
            "train.ckpt_every=100", "train.sample_every=150", "train.ema_decay=0.95", "train.num_threads=1",
            f"train.out_dir={out}", "sampler_defaults={cfg_scale: 2.0, temperature: 1.0}", "sample_classes=4"]


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tokenizer and a transformer trained for about a minute: its tests are marked slow."""
    tmp = tmp_path_factory.mktemp("e2e")
    tok_path = train_tokenizer(load_config(TokenizerRunConfig, None, tokenizer_overrides(tmp / "tok")))
    cfg = load_config(TransformerRunConfig, None, transformer_overrides(tmp, tmp / "tr"))
    extract_codes(cfg.codes, progress=False)
    # the transformer stage goes through the command line, as a user would run it
    result = CliRunner().invoke(train, ["transformer", *sum((["--set", o] for o in transformer_overrides(tmp, tmp / "tr")), [])])
    assert result.exit_code == 0, result.output
    return tmp, tok_path, cfg


@pytest.mark.slow
def test_tokenizer_learns_and_writes_its_files(trained):
    tmp, tok_path, _ = trained
    log = read_log(tmp / "tok" / "log.jsonl")
    assert [r["step"] for r in log] == list(range(10, 151, 10))
    assert log[-1]["loss_recon"] < 0.5 * log[0]["loss_recon"], (log[0], log[-1])
    assert log[-1]["mse_d1"] < log[-1]["mse_d0"]  # the second depth refines the first
    tokenizer, meta = load_tokenizer(tok_path)
    assert meta["step"] == 150 and meta["labels"] == ["apple", "house", "water", "light"]
    grid = Image.open(tmp / "tok" / "samples" / "step0000150.png")
    title = 9 + 4 + 2  # a strip naming each column: original, 1 code, 2 codes
    assert grid.size == (3 * (64 + 2) + 2, title + 8 * (16 + 2) + 2)  # original + 2 depths, 8 preview rows


@pytest.mark.slow
def test_codes_file(trained):
    tmp, _, cfg = trained
    data = load_codes(cfg.codes.path)
    assert data.codes.dtype == np.uint16 and data.codes.shape == (64, 2, 8, 2)
    assert data.labels.tolist() == [i % 4 for i in range(64)]
    assert data.label_names == ["apple", "house", "water", "light"] and data.codes.max() < 64
    tokenizer, _ = load_tokenizer(cfg.codes.tokenizer)
    image = WordImageDataset(data.label_names, "clean", seed=0, length=64, height=16, width=64)[5][0]
    first = tokenizer.encode(image[None])
    assert np.array_equal(first[0].numpy(), data.codes[5])  # sample 5 of the dataset, deterministic


@pytest.mark.slow
def test_transformer_loss_falls_and_checkpoint_samples(trained):
    tmp, _, _ = trained
    log = read_log(tmp / "tr" / "log.jsonl")
    assert log[-1]["step"] == 300
    first, last = log[0], log[-1]
    assert last["loss"] < first["loss"] - 1.0, (first, last)
    assert last["loss_d0"] < first["loss_d0"] and last["loss_d1"] < first["loss_d1"]
    ckpt = load_checkpoint(tmp / "tr" / "checkpoint.pt")
    assert ckpt.labels == ["apple", "house", "water", "light"]
    assert ckpt.meta["step"] == 300 and ckpt.meta["sampler_defaults"]["cfg_scale"] == 2.0
    model, tokenizer = ckpt.build_model(), ckpt.build_tokenizer()
    codes = generate(model, [0, 1, 2, 3], seed=0, **ckpt.meta["sampler_defaults"])
    assert codes.shape == (4, 2, 8, 2) and int(codes.max()) < 64
    images = tokenizer.decode(codes)
    assert images.shape == (4, 3, 16, 64) and torch.isfinite(images).all()
    # a white page with dark ink: most pixels near white, some clearly darker
    assert images.mean() > 0.3 and images.min() < 0.0
    grid = Image.open(tmp / "tr" / "samples" / "step0000300.png")
    assert grid.size == (4 * (64 + 2) + 2, 9 + 4 + 2 + 2 * (16 + 2) + 2)  # a column per class, titled; 2 samples


@pytest.mark.slow
def test_checkpoint_holds_the_ema_weights(trained):
    tmp, _, _ = trained
    ckpt = load_checkpoint(tmp / "tr" / "checkpoint.pt")
    state = torch.load(tmp / "tr" / "train_state.pt", weights_only=True)
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    raw = state["model"]
    assert all(torch.equal(ckpt.model[k], ema[k]) for k in ckpt.model)
    assert any(not torch.equal(ckpt.model[k], raw[k]) for k in ckpt.model)


@pytest.mark.slow
def test_model_settings_must_agree_with_the_codes(trained):
    tmp, _, _ = trained
    cfg = load_config(TransformerRunConfig, None, transformer_overrides(tmp, tmp / "bad") + ["model.vocab_size=99"])
    with pytest.raises(InvalidInputError, match="vocab_size"):
        train_transformer(cfg)


def test_user_image_folder_trains_and_encodes(tmp_path):
    words = WordImageDataset(["cat", "dog"], "varied", seed=0, length=6, height=16, width=64)
    for i in range(6):  # a user's folder: one sub-folder per class, mixed formats
        (tmp_path / "data" / words.words[i % 2]).mkdir(parents=True, exist_ok=True)
        words.render(i).save(tmp_path / "data" / words.words[i % 2] / f"{i}.{'png' if i % 3 else 'jpg'}")
    (tmp_path / "data" / "cat" / "notes.png").write_text("not an image")
    folder = ["data.kind=folder", f"data.root={tmp_path / 'data'}", "data.height=16", "data.width=64"]
    tok = train_tokenizer(load_config(TokenizerRunConfig, None, [
        "tokenizer={ch: 8, ch_mult: [1, 2, 2, 2], embed_dim: 8, codebook_size: 16, depth: 2}", *folder,
        "train.steps=4", "train.batch_size=4", "train.sample_every=2", f"train.out_dir={tmp_path / 'tok'}"]))
    assert load_tokenizer(tok)[1]["labels"] == ["cat", "dog"]
    codes = [f"codes.{o}" for o in folder] + [f"codes.path={tmp_path / 'c.npz'}", f"codes.tokenizer={tok}"]
    extract_codes(load_config(TransformerRunConfig, None, codes).codes, progress=False)
    data = load_codes(tmp_path / "c.npz")
    assert data.codes.shape == (6, 2, 8, 2) and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(InvalidInputError, match="variants"):
        extract_codes(load_config(TransformerRunConfig, None, codes + ["codes.variants=3"]).codes, progress=False)


def _code_file(path, **changes):
    """A small valid code file with `changes` in place of its arrays."""
    config = json.dumps(dict(image_height=16, image_width=64, ch=8, ch_mult=[1, 2, 2, 2], embed_dim=8,
                             codebook_size=16, depth=2))
    arrays = dict(codes=np.zeros((3, 2, 8, 2), np.uint16), labels=np.array([0, 1, 1]),
                  label_names=np.array(["cat", "dog"]), tokenizer_config=np.array(config))
    np.savez(path, **{**arrays, **changes})
    return path


@pytest.mark.parametrize("changes, fragment", [
    (dict(labels=np.array(["0", "1", "1"])), r"labels <U1 \[3\] are not integer arrays"),
    (dict(codes=np.full((3, 2, 8, 2), 16, np.uint16)), r"codes hold ids outside 0..15"),
    (dict(labels=np.array([0, 1, 2])), r"labels hold ids outside 0..1"),
    (dict(tokenizer_config=np.array("{not json")), "tokenizer_config must be a mapping of settings, got NoneType"),
    (dict(tokenizer_config=np.array('{"ch": "8"}')), r"tokenizer_config.ch = '8' is not an integer"),
    (dict(label_names=np.array([1, 2])), r"label_names is int64 \[2\], not a list of class names"),
])
def test_a_code_file_with_a_value_of_the_wrong_type_is_named(tmp_path, changes, fragment):
    path = _code_file(tmp_path / "c.npz")
    assert load_codes(path).labels.tolist() == [0, 1, 1]
    _code_file(path, **changes)
    with pytest.raises(InvalidInputError, match=fragment):
        load_codes(path)
