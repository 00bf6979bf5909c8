"""Bad input gives a typed error with a useful message, and never leaves a folder behind."""
import re
import resource
import shutil
import signal

import numpy as np
import pytest
from click.testing import CliRunner

from dnd_export import ExportError, export_model
from dnd_export.cli import main
from dnd_sdk.errors import CheckpointError, InvalidInputError
from dnd_sdk.model_folder.manifest import load_manifest


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_missing_and_corrupt_checkpoints(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        export_model(tmp_path / "nope.pt", tmp_path / "out")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        export_model(cut, tmp_path / "out")
    assert leftovers(tmp_path) == ["cut.pt"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="int3"), "dtype 'int3' is not supported"),
    (dict(dtype="int8", check=True), "judge a quantized export with `dnd eval ocr"),
    (dict(opset=11), "opset 11 is not supported"),
    (dict(dtype="bf16", check=True), "no bfloat16 CPU kernels"),
    (dict(dtype="bf16", decoder_dtype="int8"), r"dtype bf16 with decoder_dtype int8 makes a folder no backend runs: "
                                               r"tensorrt: TensorRT does not build .* this folder's int8 decoder \(QLinearConv\); .*"
                                               "onnxruntime-cuda: bf16 stage graphs run on TensorRT"),
])
def test_unsupported_settings(tiny_checkpoint, tmp_path, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        export_model(tiny_checkpoint, tmp_path / "out", **kwargs)
    assert leftovers(tmp_path) == []


def test_shared_prediction_heads_are_refused(make_checkpoint, tmp_path):
    path = make_checkpoint(tmp_path / "c.pt", share_prediction_heads=True)
    with pytest.raises(InvalidInputError, match="share_prediction_heads=True with 2 heads is not supported"):
        export_model(path, tmp_path / "out")
    assert leftovers(tmp_path) == ["c.pt"]


def test_unknown_sampler_defaults_in_meta(make_checkpoint, tmp_path):
    path = make_checkpoint(tmp_path / "c.pt", meta={"sampler_defaults": {"cfg": 3.0}})
    with pytest.raises(CheckpointError, match=r"unknown keys \['cfg'\]"):
        export_model(path, tmp_path / "out")
    assert leftovers(tmp_path) == ["c.pt"]


def test_existing_folder_needs_force(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="exists and is not empty; pass force=True to replace it, or choose "
                                                "another out_dir"):
        export_model(tiny_checkpoint, out)
    assert leftovers(out) == ["keep.txt"]
    (out / "keep.txt").unlink()
    export_model(tiny_checkpoint, out)
    export_model(tiny_checkpoint, out, force=True, dtype="fp16")  # a folder dnd-export made: replaced
    assert load_manifest(out).dtype == "fp16"
    assert leftovers(tmp_path) == ["out"]  # no temporary or old folders beside it
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_manifest(export_model(tiny_checkpoint, empty)).depth == 2  # an empty folder is fine


@pytest.mark.parametrize("foreign", ["keep.txt", "samples/000000.png", "stage0.onnx.orig"])
def test_force_never_deletes_what_dnd_export_did_not_write(tiny_checkpoint, tiny_model_dir, tmp_path, foreign):
    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    (out / foreign).parent.mkdir(exist_ok=True)
    (out / foreign).write_text("not the exporter's")
    result = CliRunner().invoke(main, [str(tiny_checkpoint), "-o", str(out), "--force"])
    assert result.exit_code == 1 and result.output == (
        f"Error: {out} holds {foreign}, which dnd-export did not write: --force replaces only a folder dnd-export "
        "made itself and deletes nothing else. Move those files out of it or choose another --out\n")
    assert (out / foreign).read_text() == "not the exporter's" and leftovers(tmp_path) == ["model"]


def test_force_never_replaces_files_that_only_bear_the_exported_names(tiny_checkpoint, tiny_model_dir, tmp_path):
    web = tmp_path / "webapp"  # a person's folder whose files happen to have names dnd-export writes
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "my app"}')
    (web / "decoder.onnx").write_text("mine")
    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    (out / "stage4.onnx").write_text("mine")  # an exported name its manifest does not list
    for folder, held in ((web, "decoder.onnx, manifest.json"), (out, "stage4.onnx")):
        result = CliRunner().invoke(main, [str(tiny_checkpoint), "-o", str(folder), "--force"])
        assert result.exit_code == 1 and f"{folder} holds {held}, which dnd-export did not write" in result.output
    assert (web / "decoder.onnx").read_text() == "mine" and (out / "stage4.onnx").read_text() == "mine"
    (out / "stage4.onnx").unlink()
    data = bytearray((out / "stage1.onnx").read_bytes())  # a listed graph a person changed is theirs now
    data[-1] ^= 1
    (out / "stage1.onnx").write_bytes(bytes(data))
    result = CliRunner().invoke(main, [str(tiny_checkpoint), "-o", str(out), "--force"])
    assert result.exit_code == 1 and "holds stage1.onnx, which dnd-export did not write" in result.output
    assert (out / "stage1.onnx").read_bytes() == bytes(data)


def test_force_replaces_a_folder_dnd_export_wrote_with_external_data(tiny_checkpoint, tmp_path):
    out = export_model(tiny_checkpoint, tmp_path / "model", external_threshold=0)
    assert "stage0.onnx.data" in leftovers(out)
    export_model(tiny_checkpoint, out, force=True)
    assert "stage0.onnx.data" not in leftovers(out) and leftovers(tmp_path) == ["model"]


def test_an_out_that_is_a_link_gets_the_model_in_the_folder_it_leads_to(tiny_checkpoint, tmp_path):
    (tmp_path / "disk").mkdir()
    (tmp_path / "model").symlink_to(tmp_path / "disk")
    result = CliRunner().invoke(main, [str(tiny_checkpoint), "-o", str(tmp_path / "model")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model").is_symlink() and load_manifest(tmp_path / "disk").depth == 2
    assert sorted(leftovers(tmp_path)) == ["disk", "model"]


def test_a_file_written_into_the_target_during_the_export_is_kept(tiny_checkpoint, tmp_path, monkeypatch):
    import dnd_export.export

    out = tmp_path / "out"
    out.mkdir()
    write_manifest = dnd_export.export.write_manifest

    def write_then_someone_writes_into_out(folder, manifest):
        write_manifest(folder, manifest)
        (out / "notes.txt").write_text("mine")

    monkeypatch.setattr(dnd_export.export, "write_manifest", write_then_someone_writes_into_out)
    with pytest.raises(InvalidInputError, match="no longer empty and was left as it is; pass force=True"):
        export_model(tiny_checkpoint, out)
    assert leftovers(tmp_path) == ["out"] and leftovers(out) == ["notes.txt"]


@pytest.mark.parametrize("out", ["run", "."])
def test_a_folder_holding_the_checkpoint_is_refused_even_with_force(tiny_checkpoint, tmp_path, out):
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.parent.mkdir()
    shutil.copyfile(tiny_checkpoint, ckpt)
    with pytest.raises(InvalidInputError, match="holds the input .*checkpoint.pt: replacing it would delete the input"):
        export_model(ckpt, tmp_path / out, force=True)
    assert leftovers(tmp_path) == ["run"] and leftovers(ckpt.parent) == ["checkpoint.pt"]


def test_the_current_folder_is_refused_up_front(tiny_checkpoint, tmp_path, monkeypatch):
    (tmp_path / "keep.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, [str(tiny_checkpoint), "-o", ".", "--force"])
    assert result.exit_code == 1 and result.output == (
        "Error: . is the current folder or holds it, so it cannot be replaced; choose another --out, "
        "or run from outside it\n")
    assert leftovers(tmp_path) == ["keep.txt"]


def test_a_failed_write_says_what_failed(tiny_checkpoint, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ExportError) as e:
        export_model(tiny_checkpoint, tmp_path / "file" / "model")
    assert str(e.value) == f"writing {tmp_path}/file/model failed (File exists: {tmp_path}/file); nothing was left behind."
    assert leftovers(tmp_path) == ["file"]


def test_disk_full_leaves_nothing_behind(tiny_checkpoint, tmp_path):
    # a real write failure: the file-size limit makes the kernel refuse writes past 100 kB (EFBIG)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(ExportError, match="failed .File too large.*nothing was left behind. The file system or a "
                                              "file-size limit .ulimit -f. refuses files this large"):
            export_model(tiny_checkpoint, tmp_path / "new" / "deeper" / "model")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert leftovers(tmp_path) == []  # not even the parent folders it created


def test_cli_exit_codes_and_messages(tiny_checkpoint, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(main, [str(tmp_path / "nope.pt"), "-o", str(tmp_path / "out")])
    assert bad.exit_code == 1 and "no such checkpoint" in bad.output and "Traceback" not in bad.output
    ok = runner.invoke(main, [str(tiny_checkpoint), "-o", str(tmp_path / "out"), "--dtype", "fp16"])
    assert ok.exit_code == 0, ok.output
    assert "Wrote" in ok.output and load_manifest(tmp_path / "out").dtype == "fp16"
    again = runner.invoke(main, [str(tiny_checkpoint), "-o", str(tmp_path / "out")])
    assert again.exit_code == 1
    assert again.output.endswith("exists and is not empty; pass --force to replace it, or choose another --out\n")
    both = runner.invoke(main, [str(tiny_checkpoint), "-o", str(tmp_path / "x"), "--dtype", "bf16",
                                "--decoder-dtype", "int8"])
    assert both.exit_code == 1 and both.output.endswith(
        "Keep a float --decoder-dtype (auto, fp32 or fp16) for bf16, or use --dtype fp32, fp16, int8, int4, int4-int8 with an "
        "int8 decoder\n")


def edited_checkpoint(source, path, edit):
    """A copy of checkpoint `source` with edit(raw dict) applied, saved as torch.save writes it."""
    import torch

    from dnd_training.torch_files import atomic_torch_save

    raw = torch.load(source, weights_only=True)
    edit(raw)
    atomic_torch_save(raw, path)
    return path


def set_value(part, key, value):
    def edit(raw):
        raw[part][key].view(-1)[0] = value
    return edit


@pytest.mark.parametrize("part, key, args, value, fragment, flag", [
    ("model", "layers.1.feed_forward.w1.weight", dict(dtype="fp16"), 7e4,
     r"model weight layers\.1\.feed_forward\.w1\.weight holds values up to 7e\+04, which overflow fp16", "--dtype"),
    ("model", "tok_embeddings.weight", dict(dtype="fp16"), -7e4,
     r"model weight tok_embeddings\.weight holds values up to 7e\+04, which overflow fp16", "--dtype"),
    ("model", "cls_embedding.embedding_table.weight", dict(dtype="bf16"), 3.4e38,
     r"model weight cls_embedding\.embedding_table\.weight holds values up to 3\.4e\+38, which overflow bf16",
     "--dtype"),
    ("tokenizer", "decoder.conv_out.weight", dict(decoder_dtype="fp16"), 7e4,
     r"tokenizer weight decoder\.conv_out\.weight holds values up to 7e\+04, which overflow fp16", "--decoder-dtype"),
])
def test_weights_that_overflow_the_export_dtype_are_refused_by_name(tiny_checkpoint, tmp_path, part, key, args,
                                                                    value, fragment, flag):
    # finite in float32 (so the checkpoint loads), but inf once cast: a folder that samples blank images
    ckpt = edited_checkpoint(tiny_checkpoint, tmp_path / "c.pt", set_value(part, key, value))
    with pytest.raises(InvalidInputError, match=fragment):
        export_model(ckpt, tmp_path / "out", **args)
    options = [f"--{k.replace('_', '-')}={v}" for k, v in args.items()]
    result = CliRunner().invoke(main, [str(ckpt), "-o", str(tmp_path / "out"), *options])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert re.search(fragment + f".*Export with a wider {flag} ", result.output), result.output
    assert leftovers(tmp_path) == ["c.pt"]


def test_weights_that_fit_the_export_dtype_still_export(tiny_checkpoint, tmp_path):
    ckpt = edited_checkpoint(tiny_checkpoint, tmp_path / "c.pt", set_value("model", "tok_embeddings.weight", 6e4))
    out = export_model(ckpt, tmp_path / "out", dtype="fp16")
    assert np.load(out / "embeddings.npz")["tok_embeddings"].flat[0] == np.float16(6e4)


def damage(path, entry_suffix, out):
    """A copy of torch file `path` with one byte of the zip entry ending in `entry_suffix` flipped."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(entry_suffix))
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + 5] ^= 0x40
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("entry, fragment", [
    ("/data/2", r"damaged: tensor 'layers\.0\.attention\.wqkv\.weight' \(entry '.*/data/2'\) does not match the "
                "CRC-32 its archive stored"),
    ("/data.pkl", r"damaged: entry '.*data\.pkl' \(the file's index of its tensors\) does not match the CRC-32"),
])
def test_damaged_checkpoint_bytes_are_refused_by_their_crc(tiny_checkpoint, tmp_path, entry, fragment):
    from dnd_training.checkpoint import load_checkpoint

    bad = damage(tiny_checkpoint, entry, tmp_path / "bad.pt")
    for mmap in (False, True):  # a mapped load reads the tensors' bytes straight from the file
        with pytest.raises(CheckpointError, match=fragment):
            load_checkpoint(bad, mmap=mmap)
    result = CliRunner().invoke(main, [str(bad), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert re.search(fragment, result.output), result.output
    assert leftovers(tmp_path) == ["bad.pt"]
