"""A model folder is a boundary, and every bad value in it is a ManifestError naming the problem:
never a traceback, an allocation sized by an unchecked number, or a read outside the folder."""
import io
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from dnd_sdk import Generator
from dnd_sdk.cli.main import cli
from dnd_sdk.errors import ManifestError
from dnd_sdk.manifest import load_manifest, sha256_file
from dnd_sdk.model_files import graph_session


@pytest.fixture(scope="module")
def external_model_dir(tiny_checkpoint, tmp_path_factory):
    """tiny_checkpoint exported with every graph's weights in an external-data file."""
    from dnd_export import export_model
    return export_model(tiny_checkpoint, tmp_path_factory.mktemp("ext") / "model", external_threshold=0)


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def rewrite(folder, mutate, rehash=True):
    """Apply mutate(manifest dict) and store it, with every listed file's sha256/bytes refreshed."""
    path = folder / "manifest.json"
    d = json.loads(path.read_text())
    mutate(d)
    if rehash:
        for entry in d["files"].values():
            for ref in [entry, *entry.get("external_data", [])]:
                target = folder / ref["file"]
                if os.path.isfile(target) and os.path.realpath(target).startswith(os.path.realpath(folder)):
                    ref["sha256"], ref["bytes"] = sha256_file(target), target.stat().st_size
    path.write_text(json.dumps(d))


def refused(folder, fragment):
    """Both the library and `dnd info` refuse the folder with `fragment`; the CLI in one line."""
    with pytest.raises(ManifestError, match=fragment):
        Generator(folder, threads=1)
    result = CliRunner().invoke(cli, ["info", str(folder)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    return result.output


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.onnx", "sub/../../outside.onnx"])
def test_manifest_names_only_files_inside_the_folder(tiny_model_dir, tmp_path, name):
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    shutil.copy(folder / "stage0.onnx", tmp_path / "outside.onnx")
    rewrite(folder, lambda d: d["files"]["stage0"].update(file=name), rehash=False)
    output = refused(folder, "may only list files inside itself")
    assert str(os.path.getsize("/etc/passwd")) not in output  # nothing about the outside file leaks


def test_a_link_leading_out_of_the_folder_is_refused(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    shutil.move(folder / "stage0.onnx", tmp_path / "elsewhere.onnx")  # same bytes, so the sha256 matches
    os.symlink(tmp_path / "elsewhere.onnx", folder / "stage0.onnx")
    refused(folder, "a link that leads out of")
    os.unlink(folder / "stage0.onnx")
    os.symlink("stage1.onnx", folder / "stage0.onnx")  # a link inside the folder is only a name: hash decides
    refused(folder, r"stage1.onnx: \d+ bytes, but manifest.json says \d+")


def test_external_data_the_manifest_does_not_list_is_refused(external_model_dir, tmp_path):
    folder = copy_model(external_model_dir, tmp_path / "model")
    assert Generator(folder, threads=1).sample_codes(num=1).shape == (1, 2, 4, 2)
    rewrite(folder, lambda d: d["files"]["stage0"].pop("external_data"))
    refused(folder, r"stage0.onnx reads external data \['stage0.onnx.data'\] that manifest.json does not list")


def test_external_data_pointing_out_of_the_folder_is_a_manifest_error(external_model_dir, tmp_path):
    import onnx
    folder = copy_model(external_model_dir, tmp_path / "model")
    graph = onnx.load(str(folder / "stage0.onnx"), load_external_data=False)
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../stage0.onnx.data"
    onnx.save(graph, str(folder / "stage0.onnx"))
    shutil.copy(folder / "stage0.onnx.data", tmp_path / "stage0.onnx.data")
    rewrite(folder, lambda d: None)
    refused(folder, r"reads external data \['../stage0.onnx.data'\]")
    rewrite(folder, lambda d: d["files"]["stage0"]["external_data"][0].update(file="../stage0.onnx.data"))
    refused(folder, "may only list files inside itself")


def test_external_data_changed_while_loading_is_refused(external_model_dir, tmp_path):
    folder = copy_model(external_model_dir, tmp_path / "model")
    m = load_manifest(folder)

    def open_session(model, where):  # stands in for ONNX Runtime reading the file while it is swapped
        data = folder / "stage0.onnx.data"
        content = data.read_bytes()
        data.unlink()
        data.write_bytes(content)  # same bytes, another inode: not the file that was hashed
        return "session"
    with pytest.raises(ManifestError, match=r"\['stage0.onnx.data'\] changed while stage0.onnx was loading"):
        graph_session(m, "stage0", open_session)
    assert graph_session(m, "stage1", lambda model, where: "session") == "session"


@pytest.mark.parametrize("content, fragment", [
    (b"\x08\x01\x12\x03abc", "decoder.onnx: ONNX Runtime cannot load it"),   # well-formed protobuf, not a model
    (b"\xff\xff\xff", "decoder.onnx: not a valid ONNX file"),                # not even protobuf
])
def test_corrupt_graph_with_matching_sha256_is_a_manifest_error(tiny_model_dir, tmp_path, content, fragment):
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    (folder / "decoder.onnx").write_bytes(content)
    rewrite(folder, lambda d: None)
    with pytest.raises(ManifestError, match=fragment):
        Generator(folder, threads=1)


def test_truncated_graph_with_matching_sha256_is_a_manifest_error(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    data = (folder / "stage1.onnx").read_bytes()
    (folder / "stage1.onnx").write_bytes(data[: len(data) // 2])
    rewrite(folder, lambda d: None)
    with pytest.raises(ManifestError, match="stage1.onnx: not a valid ONNX file"):
        Generator(folder, threads=1)


def _set(path, value):
    def mutate(d):
        *keys, last = path
        for k in keys:
            d = d[k]
        d[last] = value
    return mutate


@pytest.mark.parametrize("mutate, fragment", [
    (_set(["latent", "h"], 100000), "latent needs ints h, w in 1..1024"),
    (_set(["latent", "w"], -1), "latent needs ints"),
    (_set(["latent", "h"], 0), "latent needs ints"),
    (_set(["latent", "depth"], "2"), "latent needs ints"),
    (_set(["latent", "depth"], 2.0), "latent needs ints"),
    (_set(["image", "height"], 1000000), "image needs ints height, width in 1..16384"),
    (_set(["image", "width"], 64), r"decoder codes .* image .* do not match"),   # the graph makes 32 wide
    (_set(["model_config", "vocab_size"], 10**12), "model_config.vocab_size must be an int in 2..1048576"),
    (_set(["null_class"], 999), "null_class must be null or 4"),
    (_set(["null_class"], -1), "null_class must be null or 4"),
    (_set(["stages", 1, "layers"], [7]), r"stage stage1 names layers \[7\], outside 0..2"),
    (_set(["stages", 1, "layers"], [1]), r"stage stage1 names layers \[1\], outside 0..2 or taken"),
    (_set(["labels"], [1, 2, 3, 4]), "labels must be a non-empty list of non-empty strings"),
    (_set(["labels"], "catdogbirdfish"), "labels must be a non-empty list"),
    (_set(["labels"], []), "labels must be a non-empty list"),
    (_set(["kv", "past_key"], "past_key_values.%s.%d.key"), "kv needs .* each a name with one %d"),
    (_set(["kv", "present_value"], "present.value"), "kv needs"),
    (_set(["sampler_defaults", "top_k"], "5"), "sampler_defaults: top_k must be an integer"),
    (_set(["files", "stage0", "inputs", 0, "shape", 2], -5), "tensor dims must be ints"),
])
def test_absurd_manifest_values_are_refused(tiny_model_dir, tmp_path, mutate, fragment):
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    rewrite(folder, mutate)
    refused(folder, "manifest.json is invalid: " + fragment)


def test_deeply_nested_json_is_refused(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    (folder / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    refused(folder, "not valid JSON .RecursionError")


def _npz(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("tables, fragment", [
    (dict(tok_embeddings=np.zeros((64, 32), np.float32)), r"keys \['tok_embeddings'\]"),
    (dict(tok_embeddings=np.zeros((64, 31), np.float32), cls_embedding=np.zeros((5, 32), np.float32)),
     r"tok_embeddings is float32 \[64, 31\], expected \[64, 32\]"),
    (dict(tok_embeddings=np.zeros((64, 32), np.int64), cls_embedding=np.zeros((5, 32), np.float32)),
     "tok_embeddings is int64"),
    (dict(tok_embeddings=np.zeros((64, 32), np.float32), cls_embedding=np.array([{"a": 1}] * 5, dtype=object)),
     "not a readable npz of plain arrays"),
])
def test_bad_embeddings_are_refused(tiny_model_dir, tmp_path, tables, fragment):
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    (folder / "embeddings.npz").write_bytes(_npz(**tables))
    rewrite(folder, lambda d: None)
    with pytest.raises(ManifestError, match="embeddings.npz.*" + fragment):
        Generator(folder, threads=1)


def test_a_checkpoint_given_as_model_says_how_to_export_it(tiny_checkpoint, tmp_path):
    for command in (["info", str(tiny_checkpoint)], ["generate", str(tiny_checkpoint), "--num", "1", "--out",
                                                      str(tmp_path / "out")]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1
        assert result.output == (f"Error: {tiny_checkpoint}: this is a checkpoint; export it with "
                                 "`dnd-export FILE -o DIR`, then point at DIR.\n")
    assert not (tmp_path / "out").exists()


def test_every_exported_file_follows_the_umask(external_model_dir):
    from dnd_sdk.folders import UMASK
    modes = {p.name: p.stat().st_mode & 0o777 for p in external_model_dir.iterdir()}
    assert "stage0.onnx.data" in modes  # onnx writes external data 0600 on its own
    assert set(modes.values()) == {0o666 & ~UMASK}, modes


def test_image_dims_must_match_what_the_decoder_graph_makes(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "model")

    def wider(d):  # consistent inside the manifest, but the graph still makes 32-pixel-wide images
        d["image"]["width"] = 64
        d["files"]["decoder"]["outputs"][0]["shape"][2] = 64
    rewrite(folder, wider)
    with pytest.raises(ManifestError, match=r"decoder.onnx: the graph's outputs .*'image': \['batch_size', 16, 32, 3\]"
                                            r".* differ from manifest.json's .*\['batch_size', 16, 64, 3\]"):
        Generator(folder, threads=1)
    result = CliRunner().invoke(cli, ["generate", str(folder), "--num", "1", "--npz", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and not (tmp_path / "o").exists()
