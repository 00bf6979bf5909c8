"""The real TensorRT path on tiny models: `_build_engine`, `build_engines` and the TensorRT backend.

Marked `gpu`; without a GPU, TensorRT 10/11 and cuda-python every test skips with the reason.
`bash scripts/gpu-check.sh` runs them on a GPU machine.
"""
import numpy as np
import pytest

from dnd_sdk import Generator
from dnd_sdk.errors import DndError


def _why_not() -> str:
    """'' when TensorRT can run here, else what is missing."""
    try:
        import tensorrt

        from dnd_sdk.backends.cuda_runtime import CudaRuntime
        from dnd_sdk.engine_index import tensorrt_major
        tensorrt_major(tensorrt.__version__)
        CudaRuntime()
    except (ImportError, DndError) as e:
        return str(e)
    return ""


REASON = _why_not()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(REASON), reason=REASON)]


@pytest.fixture(scope="module")
def engines(tiny_model_dir, tmp_path_factory):
    from dnd_engines.build import BuildConfig, build_engines
    return build_engines(tiny_model_dir, tmp_path_factory.mktemp("trt") / "engines",
                         BuildConfig(max_batch=3, workspace_gib=1.0, optimization_level=1))


def _first_logits(gen, rows=4):
    gen.backend.reset(rows)
    return gen.backend.stage_step(0, gen.cls_embedding[np.arange(rows) % gen.num_classes][:, None, :])[0].copy()


def test_tensorrt_matches_onnxruntime_on_the_fp32_export(tiny_model_dir, engines):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1) as ref, \
            Generator(engines, backend="tensorrt") as gen:
        assert gen.backend_name == "tensorrt"
        # the last position's logits: the graph output the negative Gather used to get wrong under TensorRT
        assert np.abs(_first_logits(gen) - _first_logits(ref)).max() < 1e-3
        a, b = (g.sample_codes(num=6, seed=0, batch_size=3, temperature=0.0) for g in (ref, gen))
        assert (a == b).mean() >= 0.95
        pixels = [np.stack([np.asarray(im, dtype=np.int16) for im in g.decode(a)]) for g in (ref, gen)]
        assert np.abs(pixels[0] - pixels[1]).max() <= 1


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_engines_build_and_sample(tiny_checkpoint, tmp_path, dtype):
    from dnd_engines.build import BuildConfig, build_engines
    from dnd_export import export_model
    model = export_model(tiny_checkpoint, tmp_path / "model", dtype=dtype)
    folder = build_engines(model, tmp_path / "engines", BuildConfig(max_batch=2, workspace_gib=1.0,
                                                                     optimization_level=1))
    with Generator(folder, backend="tensorrt") as gen:
        logits = _first_logits(gen, rows=2)
        assert np.isfinite(logits).all() and logits.std() > 0
        codes = gen.sample_codes(num=2, seed=0)
        assert codes.shape == (2, 2, 4, 2) and codes.min() >= 0 and codes.max() < 64


def test_build_engine_reports_profiles_that_do_not_fit_the_graph(tiny_model_dir):
    import tensorrt as trt

    from dnd_engines.build import BuildConfig, EngineBuildError, _build_engine, _new_builder
    from dnd_engines.profiles import profile_shapes
    from dnd_sdk.manifest import load_manifest

    manifest = load_manifest(tiny_model_dir)
    shapes = profile_shapes(manifest, max_rows=2)["stage0"]
    logger = trt.Logger(trt.Logger.ERROR)
    builder = _new_builder(trt, logger)
    cache = builder.create_builder_config().create_timing_cache(b"")
    path, config = manifest.graph_path("stage0"), BuildConfig(max_batch=1, workspace_gib=1.0)
    lo, opt, hi = shapes["hidden"]
    backwards = {**shapes, "hidden": (hi, opt, lo)}  # min above max
    with pytest.raises(EngineBuildError, match="refused the shapes of 'hidden'"):
        _build_engine(trt, builder, logger, path, "fp32", backwards, config, cache)
    missing = {k: v for k, v in shapes.items() if k != "hidden"}
    with pytest.raises(EngineBuildError, match="its manifest lists"):
        _build_engine(trt, builder, logger, path, "fp32", missing, config, cache)


def test_rows_at_different_positions_match_onnxruntime(tiny_model_dir, engines):
    """Stage graph v2 on TensorRT: new rows written into their slots (one strided copy per run of rows at
    one position) and the cache zeroed at reset, against ONNX Runtime CPU on the same calls."""
    from export_helpers import run_calls
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1) as ref, \
            Generator(engines, backend="tensorrt") as gen:
        seqs = [np.concatenate([ref.cls_embedding[[label]], ref.tok_embeddings[c].sum(1)]) for label, c in
                zip((1, 3, 0), np.random.default_rng(0).integers(0, ref.vocab_size, (3, 5, 2)))]
        # row 0 runs on; rows 1 and 2 share a position, then row 2 restarts at 0
        calls = [[(seqs[0][c], c), (seqs[1][c], c), (seqs[2][c % 3], c % 3)] for c in range(6)]
        for _ in range(2):  # the second pass starts from a reset cache
            np.testing.assert_allclose(run_calls(gen.backend, calls), run_calls(ref.backend, calls), atol=1e-3)
