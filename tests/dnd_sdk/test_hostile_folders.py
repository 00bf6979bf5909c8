"""A model folder is a boundary, and every bad value in it is a ManifestError naming the problem:
never a traceback, an allocation sized by an unchecked number, or a read outside the folder."""
import hashlib
import io
import json
import os
import shutil
import tracemalloc
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from dnd_sdk import Generator
from dnd_sdk.cli.main import cli
from dnd_sdk.errors import ManifestError
from dnd_sdk.model_folder.files import graph_session, load_embeddings, read_verified
from dnd_sdk.model_folder.manifest import FileRef, Manifest, load_manifest, sha256_file


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
    (_set(["image", "width"], 64),  # the graph makes 32 wide
     r"decoder outputs: image uint8 \['batch_size', 16, 32, 3\] \(expected uint8 \['batch_size', 16, 64, 3\]\)"),
    (_set(["model_config", "vocab_size"], 10**12), "model_config.vocab_size must be an int in 2..1048576"),
    (_set(["null_class"], 999), "null_class must be null or 4"),
    (_set(["null_class"], -1), "null_class must be null or 4"),
    (_set(["stages", 1, "layers"], [7]), r"stage 1 must be graph 'stage1' with head 1 and layers \[2\] .*layers \[7\]"),
    (_set(["stages", 1, "layers"], [1]), r"stage 1 must be .* and layers \[2\]"),
    (_set(["stages", 1, "layers"], [2.0]), r"stage 1 must be .* layers \[2.0\]"),
    (_set(["stages", 0, "layers"], [0]), r"stage 0 must be .* and layers \[0, 1\]"),  # layer 1 in no stage
    (_set(["stages"], [{"graph": "stage1", "layers": [2], "head": 0},
                       {"graph": "stage0", "layers": [0, 1], "head": 1}]),
     r"stage 0 must be graph 'stage0' with head 0 and layers \[0, 1\] .*got graph 'stage1', head 0, layers \[2\]"),
    (_set(["stages", 1, "head"], 0), r"stage 1 must be graph 'stage1' with head 1"),
    (_set(["model_config", "pred_head_positions"], [2, 1]), r"model_config.pred_head_positions must be 2 increasing layer indices"),
    (_set(["model_config", "pred_head_positions"], [1, 3]), r"model_config.pred_head_positions must be .* below n_layer 3"),
    (_set(["cache_length"], 3), r"cache_length must be 8 \(1 class token \+ latent h\*w - 1"),
    (_set(["model_config", "cls_token_num"], 2), r"model_config.cls_token_num must be 1 \(the runtime feeds one"),
    (_set(["cache_length"], 9), r"cache_length must be 8"),
    (_set(["cache_length"], 2**40), r"cache_length must be an int in 1..2147483648"),
    (_set(["files", "stage1", "inputs", 2, "shape", 1], 9),
     r"stage1 inputs: kv_mask bool \['batch_size', 9\] \(expected bool \['batch_size', 8\]\)"),
    (_set(["files", "stage0", "inputs", 0, "dtype"], "float16"),
     r"stage0 inputs: hidden float16 \['batch_size', 1, 32\] \(expected float32"),
    (_set(["files", "decoder", "outputs", 0, "dtype"], "float32"), r"decoder outputs: image float32"),
    (_set(["sampler_defaults", "note"], "x"), r"sampler_defaults: unknown sampler setting\(s\) \['note'\]; a model "
                                               r"stores cfg_scale, "),
    (_set(["sampler_defaults"], ["cfg_scale"]), r"sampler_defaults must be an object of sampler settings"),
    (_set(["producer"], [1]), r"producer must be an object of strings .* got \[1\]"),
    (_set(["producer", "torch"], 2), r"producer must be an object of strings"),
    (_set(["opset"], "17"), "opset must be an int"),
    (_set(["model_config", "n_kv_head"], 0), "model_config.n_kv_head must be an int"),
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
     r"cls_embedding is object \[5\]"),
])
def test_bad_embeddings_are_refused(tiny_model_dir, tmp_path, tables, fragment):
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    (folder / "embeddings.npz").write_bytes(_npz(**tables))
    rewrite(folder, lambda d: None)
    with pytest.raises(ManifestError, match="embeddings.npz.*" + fragment):
        Generator(folder, threads=1)


@pytest.mark.parametrize("key, dtype, bad, fragment", [
    ("tok_embeddings", np.float32, np.inf, r"tok_embeddings holds NaN or infinite values \(row 3 first\)"),
    ("cls_embedding", np.float16, np.nan, r"cls_embedding holds NaN or infinite values \(row 3 first\)"),
    ("tok_embeddings", np.uint16, 0x7F80, r"tok_embeddings holds NaN or infinite values"),  # bf16 +inf
    ("cls_embedding", np.uint16, 0xFFC1, r"cls_embedding holds NaN or infinite values"),    # bf16 NaN
])
def test_non_finite_embedding_tables_are_refused(tiny_model_dir, tmp_path, key, dtype, bad, fragment):
    # a fp16 export whose weights overflowed: every file matches its sha256, and each image would be NaN
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    tables = {k: v.astype(dtype) for k, v in np.load(folder / "embeddings.npz").items()}
    tables[key][3, 7] = bad
    (folder / "embeddings.npz").write_bytes(_npz(**tables))
    rewrite(folder, lambda d: None)
    assert "embeddings.npz: " + key in refused(folder, fragment)


def test_a_checkpoint_given_as_model_says_how_to_export_it(tiny_checkpoint, tmp_path):
    # (`dnd info` summarises a checkpoint: tests/dnd_sdk/test_cli.py)
    result = CliRunner().invoke(cli, ["generate", str(tiny_checkpoint), "--num", "1", "--out", str(tmp_path / "out")])
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
    with pytest.raises(ManifestError, match=r"decoder.onnx: the graph's outputs differ from manifest.json: image is "
                                            r"uint8 \['batch_size', 16, 32, 3\] in the graph, "
                                            r"uint8 \['batch_size', 16, 64, 3\] in manifest.json"):
        Generator(folder, threads=1)
    result = CliRunner().invoke(cli, ["generate", str(folder), "--num", "1", "--npz", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and not (tmp_path / "o").exists()


def test_a_folder_refused_at_load_leaves_no_output_folder(tiny_model_dir, tmp_path):
    """Values the graphs could not run are refused before `dnd generate` writes anything."""
    for name, mutate in [("cache", _set(["cache_length"], 3)), ("sampler", _set(["sampler_defaults", "note"], "x"))]:
        folder = copy_model(tiny_model_dir, tmp_path / name)
        rewrite(folder, mutate)
        out = tmp_path / f"out_{name}"
        result = CliRunner().invoke(cli, ["generate", str(folder), "--num", "2", "--out", str(out)])
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
        assert result.output.startswith("Error: manifest.json is invalid") and "dnd-export CHECKPOINT" in result.output
        assert not out.exists()


def test_graph_element_types_must_match_the_manifest(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "model")

    def half_cache(d):  # consistent inside the manifest (an fp16 export's cache), but the graphs hold float32
        d["dtype"] = "fp16"
        for name in ("stage0", "stage1"):
            for spec in d["files"][name]["inputs"] + d["files"][name]["outputs"]:
                spec["dtype"] = "float16" if "key_values" in spec["name"] else spec["dtype"]
    rewrite(folder, half_cache)
    with pytest.raises(ManifestError, match=r"stage0.onnx: the graph's inputs differ from manifest.json: "
                                            r"past_key_values.0.key is float32 \['batch_size', 2, 8, 8\] in the graph, "
                                            r"float16 \['batch_size', 2, 8, 8\] in manifest.json"):
        Generator(folder, backend="onnxruntime-cpu", threads=1)


def _leaves(d, path=()):
    """Every path into a JSON document, containers included."""
    yield path
    for key, value in (d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()):
        yield from _leaves(value, (*path, key))


def test_any_value_anywhere_in_the_manifest_loads_or_is_a_manifest_error(tiny_model_dir):
    """No value of the wrong type, anywhere, escapes the checks as a TypeError or the like."""
    original = json.loads((tiny_model_dir / "manifest.json").read_text())
    paths = [p for p in _leaves(original) if p]
    assert len(paths) > 150
    for path in paths:
        for value in (None, True, -1, 2.5, "x", "", [], [1], [["x"]], {"a": [1]}):
            d = json.loads(json.dumps(original))
            _set(path, value)(d)
            try:
                Manifest.from_dict(d)
            except ManifestError:
                pass


@pytest.mark.parametrize("entry", ["embeddings", "external"])
def test_a_nul_byte_in_a_file_name_is_refused(tiny_model_dir, external_model_dir, tmp_path, entry):
    if entry == "embeddings":
        folder = copy_model(tiny_model_dir, tmp_path / "model")
        rewrite(folder, lambda d: d["files"]["embeddings"].update(file="embeddings.npz\0"))
    else:
        folder = copy_model(external_model_dir, tmp_path / "model")
        rewrite(folder, lambda d: d["files"]["stage0"]["external_data"][0].update(file="stage0.onnx.data\0"))
    refused(folder, r"manifest.json names '.*\\x00': .* no NUL byte")


@pytest.mark.parametrize("ref", [{"file": "decoder.onnx", "sha256": "0", "bytes": "100"},
                                 {"file": ["decoder.onnx"]}, {"file": "decoder.onnx", "bytes": True}])
def test_file_entries_need_a_name_a_sha256_and_a_size(tiny_model_dir, tmp_path, ref):
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    rewrite(folder, lambda d: d["files"]["decoder"].update(ref), rehash=False)
    refused(folder, "a file needs a name, a sha256 string and a size in bytes")


def test_a_graph_over_two_gib_is_refused_before_it_is_read(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    rewrite(folder, lambda d: d["files"]["stage0"].update(bytes=(1 << 31) + 10), rehash=False)
    refused(folder, r"stage0.onnx: 2147483658 bytes, over the 2 GiB a protobuf can hold .*dnd-export CHECKPOINT")


def test_a_verified_read_holds_the_file_once(tmp_path):
    data = np.random.default_rng(0).bytes(8 << 20)
    (tmp_path / "graph.onnx").write_bytes(data)
    ref = FileRef("graph.onnx", hashlib.sha256(data).hexdigest(), len(data))
    tracemalloc.start()
    try:
        got = read_verified(tmp_path / "graph.onnx", ref)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == data and peak < 1.1 * len(data)  # no chunks kept and then joined into a second copy


def _npy(shape, payload: bytes, descr: str = "<f4") -> bytes:
    """A .npy file whose header says `shape` whatever the payload holds."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def _write_npz(path, members: dict) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)


@pytest.mark.parametrize("tok, fragment", [
    (_npy((10**12,), bytes(64)), r"tok_embeddings is float32 \[1000000000000\], expected \[64, 32\]"),
    # the right header, then 16 MiB of zeros that deflate to a few kB
    (_npy((64, 32), bytes(64 * 32 * 4 + (16 << 20))), r"tok_embeddings unpacks to \d+ bytes, but its header "
                                                       r"implies \d+"),
])
def test_embeddings_headers_are_checked_before_their_data_is_read(tiny_model_dir, tmp_path, tok, fragment):
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    cls = io.BytesIO()
    np.save(cls, np.zeros((5, 32), np.float32))
    _write_npz(folder / "embeddings.npz", {"tok_embeddings.npy": tok, "cls_embedding.npy": cls.getvalue()})
    rewrite(folder, lambda d: None)
    manifest = load_manifest(folder, verify=False)
    tracemalloc.start()
    try:
        with pytest.raises(ManifestError, match="embeddings.npz.*" + fragment):
            load_embeddings(manifest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # neither the declared table nor the inflated padding was allocated
    with pytest.raises(ManifestError, match=fragment):
        Generator(folder, threads=1)
    result = CliRunner().invoke(cli, ["info", str(folder)])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "embeddings.npz" in result.output, result.output
