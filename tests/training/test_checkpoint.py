"""checkpoint.pt round trip and every way a checkpoint can be wrong."""
import os
import pickle
import zipfile

import pytest
import torch

from dnd_sdk.errors import CheckpointError
from dnd_training.checkpoint import load_checkpoint, save_checkpoint
from dnd_training.model import MODEL_CONFIGS, ModelArgs, Transformer
from dnd_training.tokenizer import RQTokenizer, TokenizerConfig


def tiny_pair():
    torch.manual_seed(0)
    args = ModelArgs(**MODEL_CONFIGS["tiny"])
    tok = RQTokenizer(TokenizerConfig(image_height=16, image_width=32, ch=16, ch_mult=[1, 2, 2, 2],
                                      embed_dim=8, codebook_size=args.vocab_size, depth=args.num_pred_heads))
    return Transformer(args), tok


@pytest.fixture
def saved(tmp_path):
    model, tok = tiny_pair()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, tok, ["a", "b", "c", "d"], meta={"steps": 3})
    return path, model, tok


def test_round_trip_restores_every_tensor(saved):
    path, model, tok = saved
    ckpt = load_checkpoint(path)
    assert ckpt.labels == ["a", "b", "c", "d"] and ckpt.meta == {"steps": 3}
    for name, value in ckpt.build_model().state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    for name, value in ckpt.build_tokenizer().state_dict().items():
        assert torch.equal(value, tok.state_dict()[name]), name
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())  # no temp file left


def test_missing_and_truncated_files(saved, tmp_path):
    path = saved[0]
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(cut)


@pytest.mark.parametrize("content, message", [
    (b"hello world\n" * 10, "not a complete file written by torch.save .a text file, or truncated or corrupt"),
    (bytes(range(256)) * 10, "not a complete file written by torch.save"),
])
def test_text_or_garbage_is_not_mistaken_for_a_code_running_pickle(tmp_path, content, message):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_zip_with_a_garbage_pickle_is_called_corrupt(saved, tmp_path):
    path = tmp_path / "garbage.pt"
    with zipfile.ZipFile(saved[0]) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, b"\x80\x02garbage" if name.endswith("data.pkl") else src.read(name))
    with pytest.raises(CheckpointError, match="not a readable torch file") as info:
        load_checkpoint(path)
    assert "could run code" not in str(info.value)


def resave(path, edit):
    raw = torch.load(path, weights_only=True)
    edit(raw)
    torch.save(raw, path)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(format="something-else"), "format is 'something-else'"),
    (lambda r: r.update(version=99), "version 99"),
    (lambda r: r.pop("labels"), r"missing required key\(s\) \['labels'\]"),
    (lambda r: r["model"].pop("tok_embeddings.weight"), "missing \\['tok_embeddings.weight'\\]"),
    (lambda r: r["model"].update({"norm.0.weight": torch.ones(7)}), "'norm.0.weight' has shape \\(7,\\)"),
    (lambda r: r["model_config"].update(dim=48), "its config implies \\(5, 48\\)"),
    (lambda r: r["model_config"].update(n_head=5), "invalid config"),
    (lambda r: r.update(labels=["a"]), "1 labels but num_classes=4"),
    (lambda r: r.update(labels=None), "labels must be a list of non-empty strings, got NoneType"),
    (lambda r: r.update(labels=["a", "", "c", "d"]), "labels must be a list of non-empty strings"),
    (lambda r: r["model_config"].update(dim=-32), r"model_config.dim = -32 is out of range \(1..1048576\)"),
    (lambda r: r["model_config"].update(n_head=0), "invalid config"),
    (lambda r: r["tokenizer_config"].update(image_height=10**9), "tokenizer_config.image_height = 1000000000 is out"),
    (lambda r: (r["model_config"].update(vocab_size=10**12), r["tokenizer_config"].update(codebook_size=10**12)),
     "model_config.vocab_size = 1000000000000 is out of range"),
    (lambda r: r["model"].update({"tok_embeddings.weight": r["model"]["tok_embeddings.weight"].long()}),
     "model weight 'tok_embeddings.weight' is torch.int64, expected floating point"),
    (lambda r: r["tokenizer"]["decoder.conv_out.weight"].view(-1)[3].fill_(float("nan")),
     "tokenizer weight 'decoder.conv_out.weight' holds NaN or infinite values"),
])
def test_invalid_contents_name_the_problem(saved, edit, message):
    path = saved[0]
    resave(path, edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = _RunsCode()
    evil.marker = marker
    path = tmp_path / "evil.pt"
    torch.save({"format": "dnd-checkpoint", "payload": evil}, path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(path)
    assert not marker.exists()
    # the same payload really does run code when unpickled without the guard
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    pickle.loads(data)
    assert marker.exists()


# which commands read each part of a checkpoint: all four read its tokenizer (set-tokenizer and eval as the
# tokenizer to take), only export and set-defaults its transformer and sampler defaults
TOKENIZER_READERS = ("export", "set-defaults", "set-tokenizer", "eval")
MODEL_READERS = ("export", "set-defaults")


def _command(name, path, other):
    from dnd_export.cli import main as export_main
    from dnd_sdk.cli.main import cli
    from dnd_training.cli import train

    return {"export": (export_main, [str(path), "-o", str(path.parent / "model")]),
            "set-defaults": (train, ["set-defaults", str(path), "--temperature", "0.5"]),
            "set-tokenizer": (train, ["set-tokenizer", str(other), str(path)]),
            "eval": (cli, ["eval", "ocr", str(path), "--per-class", "1"])}[name]


@pytest.mark.parametrize("edit, readers, fragment", [
    (lambda r: r["model_config"].update(norm_eps="1e-5"), MODEL_READERS,
     "model_config.norm_eps = '1e-5' is not a finite number"),
    (lambda r: r["model_config"].update(rope_base=float("nan")), MODEL_READERS,
     "model_config.rope_base = nan is not a finite number"),
    (lambda r: r["model_config"].update(pred_head_positions=["1", "2"]), MODEL_READERS,
     r"model_config.pred_head_positions = \['1', '2'\] is not a list of integers"),
    (lambda r: r["tokenizer_config"].update(ch_mult="1222"), TOKENIZER_READERS,
     "tokenizer_config.ch_mult = '1222' is not a list of integers"),
    (lambda r: r["tokenizer_config"].update(decay="0.99"), TOKENIZER_READERS,
     "tokenizer_config.decay = '0.99' is not a finite number"),
    (lambda r: r.update(meta=["steps", 3]), TOKENIZER_READERS, "meta must be a mapping, got list"),
    (lambda r: r["meta"].update(sampler_defaults=[["cfg_scale", 2]]), MODEL_READERS,
     r"meta\['sampler_defaults'\] must be a mapping of sampler settings"),
    (lambda r: r["meta"].update(sampler_defaults={"temperature": "0.5"}), ("export",),
     r"meta\['sampler_defaults'\]: temperature must be a finite number, got '0.5'"),
    (lambda r: r.update(labels=[1, 2, 3, 4]), TOKENIZER_READERS, "labels must be a list of"),
])
def test_a_value_of_the_wrong_type_is_one_line_from_every_command(saved, tmp_path, edit, readers, fragment):
    import re

    from click.testing import CliRunner

    path = saved[0]
    other = tmp_path / "other.pt"
    other.write_bytes(path.read_bytes())
    before = other.read_bytes()
    resave(path, edit)
    for name in readers:
        app, args = _command(name, path, other)
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1 and result.output.count("\n") == 1, (name, result.output, result.exception)
        assert re.search(fragment, result.output), (name, result.output)
    assert other.read_bytes() == before and not (tmp_path / "model").exists()


def test_stored_sampler_defaults_of_the_wrong_type_are_named_as_stored(saved):
    from click.testing import CliRunner

    from dnd_training.cli import train

    path = saved[0]
    resave(path, lambda r: r["meta"].update(sampler_defaults={"cfg_scale": "2"}))
    result = CliRunner().invoke(train, ["set-defaults", str(path), "--temperature", "0.5"])
    assert result.exit_code == 1 and result.output == (
        f"Error: {path}: its stored meta['sampler_defaults']: cfg_scale must be a finite number, got '2'; give the "
        "setting again to replace it\n")
    fixed = CliRunner().invoke(train, ["set-defaults", str(path), "--cfg-scale", "2"])
    assert fixed.exit_code == 0 and "cfg_scale=2.0" in fixed.output, fixed.output
