"""Half-precision exports, the size budget, and graphs stored with external data."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from dnd_engines.cli import main as dnd_build
from dnd_export import export_model
from dnd_sdk.backends import runnable
from dnd_sdk.errors import InvalidInputError, ManifestError
from dnd_sdk.model_folder.manifest import load_manifest
from dnd_training.checkpoint import load_checkpoint
from export_helpers import nbits_extremes_exact, rows_that_depend_on_their_batch, teacher_forced_logits

# fp16 weights and caches, float32 hidden state and logits: measured max abs error on the tiny
# model's logits (|logits| up to ~10) is about 5e-3
FP16_LOGITS_ATOL = 3e-2


def reference(path, batch=2):
    model = load_checkpoint(path).build_model()
    a = model.args
    codes = torch.randint(0, a.vocab_size, (batch, a.seq_len, a.num_pred_heads), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(batch) % a.num_classes
    with torch.no_grad():
        return codes.numpy(), labels.numpy(), model(codes, labels)[0].numpy()


def test_fp16_runs_in_onnxruntime_close_to_fp32(tiny_checkpoint, tmp_path):
    out = export_model(tiny_checkpoint, tmp_path / "fp16", dtype="fp16")
    m = load_manifest(out)
    assert m.dtype == "fp16"
    specs = {s.name: s.dtype for s in m.inputs("stage0") + m.outputs("stage0")}
    assert specs["hidden"] == specs["logits"] == specs["hidden_out"] == "float32"
    assert specs["past_key_values.0.key"] == specs["new_key_values.1.value"] == "float16"
    assert np.load(m.file_path("embeddings"))["tok_embeddings"].dtype == np.float16
    for name in m.stage_names + ["decoder"]:  # every weight is stored in half precision
        graph = onnx.load(str(m.graph_path(name))).graph
        assert {t.data_type for t in graph.initializer if t.dims} == {onnx.TensorProto.FLOAT16}, name
    codes, labels, expected = reference(tiny_checkpoint)
    got = teacher_forced_logits(out, codes, labels)
    err = np.abs(got - expected).max()
    assert 0 < err <= FP16_LOGITS_ATOL, err


def test_bf16_export_passes_the_checker_and_is_for_tensorrt_only(tiny_checkpoint, tmp_path):
    from dnd_sdk import Generator
    from dnd_sdk.errors import BackendUnavailableError

    out = export_model(tiny_checkpoint, tmp_path / "bf16", dtype="bf16")
    m = load_manifest(out)
    assert runnable(m.graphs) == ["tensorrt"] and m.decoder_dtype == "fp32"
    with pytest.raises(BackendUnavailableError, match=r"onnxruntime-cpu: bf16 stage graphs run on TensorRT \(dnd-build\)"):
        Generator(out)
    for name in m.stage_names + ["decoder"]:
        onnx.checker.check_model(str(m.graph_path(name)), full_check=True)
    assert m.inputs("stage0")[3].dtype == "bfloat16" and m.inputs("stage0")[0].dtype == "float32"
    emb = np.load(m.file_path("embeddings"))["tok_embeddings"]
    assert emb.dtype == np.uint16  # bfloat16 bit patterns
    bits = torch.from_numpy(emb.view(np.int16)).view(torch.bfloat16)
    weight = load_checkpoint(tiny_checkpoint).build_model().tok_embeddings.weight.detach()
    assert torch.equal(bits, weight.to(torch.bfloat16))


@pytest.mark.parametrize("dtype, bytes_per_param", [("fp32", 4), ("fp16", 2)])
def test_no_weight_stored_twice(make_checkpoint, tmp_path, dtype, bytes_per_param):
    # wide enough that weights dominate the graphs' fixed structure, as in any real model
    path = make_checkpoint(tmp_path / "c.pt", dim=256, n_layer=2, n_head=4, n_kv_head=2, vocab_size=512,
                           pred_head_positions=[0, 1])
    ckpt = load_checkpoint(path)
    tok = ckpt.build_tokenizer()
    shipped = [*ckpt.build_model().parameters(), *tok.decoder.parameters(), *tok.post_quant_conv.parameters(),
               tok.quantizer.codebook]
    param_bytes = bytes_per_param * sum(p.numel() for p in shipped)
    out = export_model(path, tmp_path / dtype, dtype=dtype)
    total = sum(f.stat().st_size for f in out.iterdir())
    assert param_bytes < total <= 1.05 * param_bytes, (total, param_bytes)


def test_external_data_beside_the_graph(tiny_checkpoint, tmp_path):
    # the same path a > 2 GB graph takes, forced with a zero threshold
    out = export_model(tiny_checkpoint, tmp_path / "ext", external_threshold=0)
    m = load_manifest(out)
    for name in m.stage_names + ["decoder"]:
        entry = m.files[name]
        assert [r.file for r in entry.external_data] == [f"{name}.onnx.data"]
        assert (out / f"{name}.onnx.data").stat().st_size == entry.external_data[0].bytes > 0
        ort.InferenceSession(str(m.graph_path(name)), providers=["CPUExecutionProvider"])
    codes, labels, expected = reference(tiny_checkpoint)
    assert np.abs(teacher_forced_logits(out, codes, labels) - expected).max() <= 1e-4
    data = bytearray((out / "stage1.onnx.data").read_bytes())
    data[-1] ^= 0x01
    (out / "stage1.onnx.data").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="stage1.onnx.data: contents do not match"):
        load_manifest(out)


@pytest.mark.parametrize("dtype", ["int8", "int4", "int4-int8"])
def test_quantized_export_is_onnxruntime_only_and_samples(tiny_checkpoint, tmp_path, dtype):
    from dnd_sdk import Generator
    from dnd_sdk.errors import BackendUnavailableError

    out = export_model(tiny_checkpoint, tmp_path / dtype, dtype=dtype)
    m = load_manifest(out)
    assert m.dtype == dtype and runnable(m.graphs) == ["onnxruntime-cuda", "onnxruntime-cpu"]
    ops = {n.op_type for n in onnx.load(str(m.graph_path("stage0"))).graph.node}
    assert {"int8": {"MatMulInteger"}, "int4": {"MatMulNBits"}, "int4-int8": {"MatMulInteger", "MatMulNBits"}}[dtype] <= ops
    with pytest.raises(BackendUnavailableError, match="tensorrt: TensorRT does not build ONNX Runtime's own "
                                                      f"integer operators, which make up this folder's {dtype} stage"):
        Generator(out, backend="tensorrt")
    result = CliRunner().invoke(dnd_build, [str(out), "-o", str(tmp_path / "engines")])
    assert result.exit_code == 1 and "export with --dtype fp32, fp16 or bf16 and a float --decoder-dtype" in result.output
    codes, labels, expected = reference(tiny_checkpoint)
    err = np.abs(teacher_forced_logits(out, codes, labels) - expected).max()
    assert 0 < err < 0.5 * np.abs(expected).max(), err  # close to the float model, not equal
    with Generator(out, threads=1) as gen:
        codes = gen.sample_codes(num=6, seed=0)
        assert codes.shape == (6, 2, 4, 2)
        assert np.array_equal(gen.sample_codes(num=6, seed=0, batch_size=1), codes)  # whatever the batch


@pytest.mark.parametrize("dtype, opset", [("int8", 17), ("int8", 20), ("int4", 17), ("int4-int8", 17)])  # ReduceMax changed at 18
def test_a_quantized_row_does_not_depend_on_the_rows_beside_it(tiny_checkpoint, tmp_path, dtype, opset):
    # activations are quantized per row, and a lone row never takes a kernel's one-row path
    # (test_other_cpus.py repeats this on an emulated AVX2 CPU)
    out = export_model(tiny_checkpoint, tmp_path / dtype, dtype=dtype, opset=opset)
    assert rows_that_depend_on_their_batch(out) == []


def int8_weight_columns(m) -> dict:
    """{graph/initializer: int8 weights as [columns, K]} of every integer product in a folder's graphs."""
    columns = {}
    for name in m.stage_names + ["decoder"]:
        graph = onnx.load(str(m.graph_path(name))).graph
        weights = {t.name: t for t in graph.initializer}
        for node in graph.node:
            w = {"MatMulInteger": 1, "QLinearConv": 3}.get(node.op_type)
            if w is not None and node.input[w] in weights:
                w = node.input[w]
                q = onnx.numpy_helper.to_array(weights[w]).astype(np.int64)
                # MatMulInteger weights are [K, N]; QLinearConv's [out, in, kh, kw] reduce over in x kh x kw
                columns[f"{name}/{w}"] = q.T if node.op_type == "MatMulInteger" else q.reshape(q.shape[0], -1)
    return columns


def test_no_int8_kernel_can_saturate(tiny_checkpoint, tmp_path):
    # Kernels without VNNI add two uint8 x int8 products in a 16-bit lane (vpmaddubsw). Which two depends on
    # the kernel's layout, so any two weights of a column times the largest uint8 activation (255) must
    # stay within 32767: checked on the folder's own initializers, on whatever CPU runs this
    m = load_manifest(export_model(tiny_checkpoint, tmp_path / "m", dtype="int8", decoder_dtype="int8"))
    assert m.quantization == {"stages": {"op": "MatMulInteger", "pair_limit": 128, "precision": {
                                  "attention": "int8", "feed_forward": "int8", "head": "int8"}},
                              "decoder": {"op": "QLinearConv", "pair_limit": 128}}
    mixed = load_manifest(export_model(tiny_checkpoint, tmp_path / "mixed", dtype="int4-int8", decoder_dtype="fp32"))
    assert mixed.quantization == {"stages": {"op": "MatMulNBits", "bits": 4, "block_size": 16, "accuracy_level": 4,
                                             "int8_op": "MatMulInteger", "pair_limit": 128, "precision": {
                                                 "attention": "int8", "feed_forward": "int4", "head": "int8"}}}
    assert m.graphs.unbounded_int8_forms == mixed.graphs.unbounded_int8_forms == []
    columns = {**int8_weight_columns(m), **{f"mixed/{k}": q for k, q in int8_weight_columns(mixed).items()}}
    assert {k.split("/")[0] for k in columns} == set(m.stage_names + ["decoder", "mixed"])
    for name, q in columns.items():
        top_two = -np.sort(-np.abs(q), axis=1)[:, :2].sum(axis=1)
        assert top_two.max() * 255 <= 32767, (name, top_two.max())
        assert top_two.max() >= 100, (name, top_two.max())  # and the weights still use the range
    # 4-bit weights (|w| <= 8) times int8 activations (|a| <= 127): 2 * 8 * 127 is far from the limit
    int4 = load_manifest(export_model(tiny_checkpoint, tmp_path / "int4", dtype="int4", decoder_dtype="fp32"))
    for folder in (int4, mixed):
        nodes = [n for k in folder.stage_names for n in onnx.load(str(folder.graph_path(k))).graph.node
                 if n.op_type == "MatMulNBits"]
        assert nodes and {a.i for n in nodes for a in n.attribute if a.name == "bits"} == {4}
    # and the kernel this CPU dispatches adds the extremes exactly, one row or many (avx2_check.py: on AVX2 too)
    assert nbits_extremes_exact()


@pytest.mark.parametrize("dtype, decoder_dtype", [("int8", "int8"), ("int4", "fp32")])
def test_quantized_graphs_keep_only_their_own_external_data(tiny_checkpoint, tmp_path, dtype, decoder_dtype):
    from dnd_sdk import Generator
    from dnd_sdk.model_folder.onnx_refs import onnx_external_files

    out = export_model(tiny_checkpoint, tmp_path / "m", dtype=dtype, decoder_dtype=decoder_dtype, external_threshold=0)
    fp32 = export_model(tiny_checkpoint, tmp_path / "fp32", external_threshold=0)
    m = load_manifest(out)
    for name in m.stage_names + ["decoder"]:
        listed = [r.file for r in m.files[name].external_data]
        assert listed == [f"{name}.onnx.data"] and sorted(onnx_external_files(m.graph_path(name).read_bytes())) == listed
        if name != "decoder" or decoder_dtype == "int8":  # quantized weights, no float copy left beside them
            assert (out / listed[0]).stat().st_size < 0.5 * (fp32 / listed[0]).stat().st_size, name
    assert sorted(f.name for f in out.iterdir()) == sorted(["manifest.json", "embeddings.npz"] + [
        f for name in m.stage_names + ["decoder"] for f in (f"{name}.onnx", f"{name}.onnx.data")])
    with Generator(out, threads=1) as gen:
        assert gen.sample_codes(num=2, seed=0).shape == (2, 2, 4, 2)


def test_int8_decoder_keeps_the_tokens_and_approximates_the_pixels(tiny_checkpoint, tiny_model_dir, tmp_path):
    from dnd_export.trt_lint import lint_folder
    from dnd_sdk import Generator

    out = export_model(tiny_checkpoint, tmp_path / "m", decoder_dtype="int8")
    m = load_manifest(out)
    assert (m.dtype, m.decoder_dtype) == ("fp32", "int8") and runnable(m.graphs) == ["onnxruntime-cuda", "onnxruntime-cpu"]
    assert "QLinearConv" in {n.op_type for n in onnx.load(str(m.graph_path("decoder"))).graph.node}
    assert lint_folder(out) == []  # an ONNX-Runtime-only folder is not for dnd-build
    with Generator(tiny_model_dir, threads=1) as fp32, Generator(out, threads=1) as int8:
        codes = fp32.sample_codes(num=4, seed=3)
        assert np.array_equal(int8.sample_codes(num=4, seed=3), codes)  # the stage graphs are the same
        exact, approx = (np.stack([np.asarray(im, np.float64) for im in g.decode(codes)]) for g in (fp32, int8))
    error = np.abs(exact - approx)
    assert 0 < error.mean() < 0.05 * 255, error.mean()  # close to the float decoder, not equal


def test_decoder_dtype_is_checked(tiny_checkpoint, tmp_path):
    with pytest.raises(InvalidInputError, match="decoder_dtype 'int4' is not supported"):
        export_model(tiny_checkpoint, tmp_path / "m", decoder_dtype="int4")
    with pytest.raises(InvalidInputError, match="--check compares with PyTorch"):
        export_model(tiny_checkpoint, tmp_path / "m", dtype="int8", check=True)
    assert not (tmp_path / "m").exists()


def test_check_judges_an_int8_decoder_by_psnr(tiny_checkpoint, tmp_path, caplog):
    with caplog.at_level("INFO", logger="dnd_export"):
        export_model(tiny_checkpoint, tmp_path / "m", decoder_dtype="int8", check=True)
    row = next(r.getMessage() for r in caplog.records if "decoder" in r.getMessage())
    assert row.startswith("ok") and "PSNR" in row, row
    assert float(row.split("PSNR ")[1].split(" dB")[0]) >= 30


def test_an_int8_folder_from_before_the_pair_limit_runs_only_where_it_cannot_saturate(tiny_checkpoint, tmp_path,
                                                                                     monkeypatch):
    import functools
    import json

    from dnd_sdk import Generator
    from dnd_sdk.backends import onnxrt_spec
    from dnd_sdk.cpu import parse_cpuinfo
    from dnd_sdk.errors import BackendUnavailableError

    out = export_model(tiny_checkpoint, tmp_path / "m", dtype="int8")
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["quantization"]  # as folders were written before it
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert load_manifest(out).graphs.unbounded_int8_forms == ["stages", "decoder"]
    for flags, refused in (("avx2 avx512f avx512_vnni", False), ("avx2 avx_vnni", False), ("avx2 avx512f", True)):
        monkeypatch.setattr(onnxrt_spec, "cpu_features", functools.partial(parse_cpuinfo, f"model name\t: x\nflags\t\t: {flags}\n"))
        if refused:
            with pytest.raises(BackendUnavailableError, match="int8 stages and decoder of this folder were quantized "
                                                              "before .* Export it again with dnd-export"):
                Generator(out, backend="onnxruntime-cpu")
        else:
            Generator(out, backend="onnxruntime-cpu", threads=1).close()
