"""manifest.json: what the export writes, round trip, and every way a folder can be damaged."""
import json
import shutil

import numpy as np
import onnx
import pytest

from dnd_sdk.backends import runnable
from dnd_sdk.errors import ManifestError
from dnd_sdk.model_folder.manifest import DIM_NAMES, Manifest, load_manifest, sha256_file, write_manifest
from dnd_training.checkpoint import load_checkpoint


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def test_manifest_describes_the_folder(tiny_checkpoint, tiny_model_dir):
    m = load_manifest(tiny_model_dir)
    args = load_checkpoint(tiny_checkpoint).model_args
    assert (m.format, m.version, m.dtype, m.opset) == ("dnd-model", 2, "fp32", 17)
    assert m.labels == ["cat", "dog", "bird", "fish"] and m.null_class == 4
    assert m.latent == {"h": 2, "w": 4, "depth": 2} and m.image == {"height": 16, "width": 32}
    assert m.sampler_defaults == {"cfg_scale": 2.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    assert [(s.graph, s.layers, s.head) for s in m.stages] == [("stage0", [0, 1], 0), ("stage1", [2], 1)]
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == [
        "decoder.onnx", "embeddings.npz", "manifest.json", "stage0.onnx", "stage1.onnx"]
    for name, entry in m.files.items():
        assert entry.sha256 == sha256_file(tiny_model_dir / entry.file), name

    kv = args.n_kv_head
    ins = {s.name: (s.dtype, s.shape) for s in m.inputs("stage1")}
    outs = {s.name: (s.dtype, s.shape) for s in m.outputs("stage1")}
    # graph v2: the cache is fixed at L = 1 condition slot + 2*4 - 1 cells; only rows are dynamic
    assert m.cache_length == 8 and runnable(m.graphs) == ["tensorrt", "onnxruntime-cuda", "onnxruntime-cpu"]
    assert "forms" not in json.loads((tiny_model_dir / "manifest.json").read_text())  # backends judge the graphs
    assert ins == {"hidden": ("float32", ["batch_size", 1, 32]), "positions": ("int64", ["batch_size"]),
                   "kv_mask": ("bool", ["batch_size", 8]),
                   "past_key_values.2.key": ("float32", ["batch_size", kv, 8, 8]),
                   "past_key_values.2.value": ("float32", ["batch_size", kv, 8, 8])}
    assert outs == {"logits": ("float32", ["batch_size", 64]),
                    "hidden_out": ("float32", ["batch_size", 1, 32]),
                    "new_key_values.2.key": ("float32", ["batch_size", kv, 1, 8]),
                    "new_key_values.2.value": ("float32", ["batch_size", kv, 1, 8])}
    assert m.past_names(2) == ("past_key_values.2.key", "past_key_values.2.value")
    assert m.new_names(2) == ("new_key_values.2.key", "new_key_values.2.value")
    assert [(s.name, s.dtype, s.shape) for s in m.inputs("decoder")] == [("codes", "int64", ["batch_size", 2, 4, 2])]
    assert [(s.name, s.dtype, s.shape) for s in m.outputs("decoder")] == [("image", "uint8", ["batch_size", 16, 32, 3])]

    # the manifest's I/O lists are the graphs' own
    for name in m.stage_names + ["decoder"]:
        graph = onnx.load(str(m.graph_path(name)), load_external_data=False).graph
        assert [i.name for i in graph.input] == [s.name for s in m.inputs(name)]
        assert [o.name for o in graph.output] == [s.name for s in m.outputs(name)]
        assert all(isinstance(d, int) or d in DIM_NAMES for s in m.inputs(name) + m.outputs(name) for d in s.shape)
    emb = np.load(m.file_path("embeddings"))
    assert emb["tok_embeddings"].shape == (64, 32) and emb["cls_embedding"].shape == (5, 32)


def test_round_trip_through_dict_and_file(model_copy):
    m = load_manifest(model_copy)
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    again = write_manifest(model_copy, m)
    assert again == m and load_manifest(model_copy) == m


ALL_BACKENDS = ["tensorrt", "onnxruntime-cuda", "onnxruntime-cpu"]


@pytest.mark.parametrize("older", [
    # as dnd-export wrote folders before backends judged them: the backends of each graph form named
    {"forms": {"stages": ALL_BACKENDS, "decoder": ALL_BACKENDS}},
    # before the decoder's form and dtype were recorded: its decoder is float, and runs everywhere
    {"forms": {"stages": ALL_BACKENDS}, "decoder_dtype": None},
])
def test_folders_written_before_load_and_run_where_they_ran(model_copy, older):
    raw = json.loads((model_copy / "manifest.json").read_text())
    for key, value in older.items():
        raw.pop(key) if value is None else raw.__setitem__(key, value)
    (model_copy / "manifest.json").write_text(json.dumps(raw))
    m = load_manifest(model_copy)
    assert m.decoder_dtype == raw.get("decoder_dtype", "") and runnable(m.graphs) == ALL_BACKENDS
    assert "forms" not in m.to_dict()  # read past: the dtypes say the same


@pytest.mark.parametrize("victim", ["stage1.onnx", "decoder.onnx", "embeddings.npz"])
def test_tampered_file_is_named(model_copy, victim):
    data = bytearray((model_copy / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed: only the sha256 can tell
    (model_copy / victim).write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=rf"{victim}: contents do not match manifest.json.*Re-export"):
        load_manifest(model_copy)
    assert load_manifest(model_copy, verify=False).dtype == "fp32"  # verify=False skips the hashes


def test_missing_file_and_missing_manifest(model_copy, tmp_path):
    (model_copy / "stage0.onnx").unlink()
    with pytest.raises(ManifestError, match="stage0.onnx: listed in manifest.json but missing"):
        load_manifest(model_copy)
    with pytest.raises(ManifestError, match="no manifest.json here"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format="other"), "format is 'other'"),
    (lambda d: d.update(version=1), r"version 1 is not supported \(this build reads 2\)\. Re-export the model with "
                                    r"`dnd-export CHECKPOINT"),
    (lambda d: d.update(decoder_dtype="int4"), "decoder_dtype must be one of"),
    (lambda d: d.update(cache_length=0), "cache_length must be an int in"),
    (lambda d: d.pop("stages"), r"missing required field\(s\) \['stages'\]"),
    (lambda d: d.update(dtype="int2"), "dtype 'int2' is not one of"),
    (lambda d: d["stages"].pop(), "1 stages for depth 2"),
    (lambda d: d["files"].pop("decoder"), r"files lacks entries \['decoder'\]"),
    (lambda d: d["files"]["stage0"]["inputs"][0].update(shape=["batch", 1, 32]), "unknown dims"),
    (lambda d: d["sampler_defaults"].update(later=0.05), r"sampler_defaults: unknown sampler setting\(s\) \['later'\]"),
    (lambda d: d["stages"][0].pop("head"), "malformed"),
    (lambda d: d.update(quantization={"stages": {"op": "MatMulNBits", "precision": {"attention": "int2"}}}),
     "quantization must map stages or decoder"),
    (lambda d: d.update(quantization={"stages": {"op": {"nested": 1}}}), "quantization must map stages or decoder"),
])
def test_invalid_manifest_fields(model_copy, edit, message):
    raw = json.loads((model_copy / "manifest.json").read_text())
    edit(raw)
    (model_copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=message):
        load_manifest(model_copy, verify=False)


def test_not_json(model_copy):
    (model_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(model_copy)


def test_spilled_weights_are_gathered_into_one_data_file_without_loading_them(tmp_path):
    """What the exporter does past 2 GB (one file per tensor) is re-saved as graph + one .data file."""
    import onnx
    from onnx import helper, numpy_helper

    from dnd_export.onnx_export import _save
    rng = np.random.default_rng(0)
    weights = {f"w{i}": rng.standard_normal((64, 64)).astype(np.float32) for i in range(3)}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w0"], ["a"]), helper.make_node("MatMul", ["a", "w1"], ["b"]),
         helper.make_node("MatMul", ["b", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(w, name) for name, w in weights.items()])
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    scratch.mkdir(), out.mkdir()
    onnx.save_model(helper.make_model(graph), str(scratch / "stage0.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0)
    spilled = onnx.load(str(scratch / "stage0.onnx"), load_external_data=False)
    assert _save(spilled, scratch, out / "stage0.onnx", threshold=10**12) == ["stage0.onnx.data"]
    assert sorted(p.name for p in out.iterdir()) == ["stage0.onnx", "stage0.onnx.data"]
    back = onnx.load(str(out / "stage0.onnx"))
    for t in back.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), weights[t.name])
