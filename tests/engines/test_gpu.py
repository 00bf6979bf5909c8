"""The real GPU paths on tiny models: `_build_engine`, `build_engines`, the TensorRT and ONNX Runtime CUDA
backends, and the kernel that writes new rows into the KV cache on the device.

Marked `gpu`; each test skips, saying what is missing, without what it needs: a GPU and cuda-python
(with NVRTC) for the kernel, plus TensorRT 10/11 or onnxruntime-gpu for a backend.
`bash scripts/gpu-check.sh` runs them on a GPU machine.
"""
import numpy as np
import pytest

from dnd_sdk import Generator
from dnd_sdk.errors import DndError


def _why_no_kernel() -> str:
    """'' when the device cache's kernel compiles and loads here, else what is missing."""
    try:
        from dnd_sdk.backends.cuda_runtime import CudaRuntime
        from dnd_sdk.backends.device_cache import KERNEL_NAME, KERNEL_SOURCE
        CudaRuntime().compile(KERNEL_SOURCE, KERNEL_NAME)
    except (ImportError, DndError) as e:
        return str(e)
    return ""


def _why_no_tensorrt() -> str:
    """'' when TensorRT can run here, else what is missing."""
    try:
        import tensorrt

        from dnd_sdk.model_folder.engine_index import tensorrt_major
        tensorrt_major(tensorrt.__version__)
    except (ImportError, DndError) as e:
        return str(e)
    return KERNEL


def _why_no_onnxruntime_cuda() -> str:
    """'' when ONNX Runtime has its CUDA provider here and the kernel runs, else what is missing."""
    try:
        import onnxruntime
    except ImportError as e:
        return str(e)
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "ONNX Runtime has no CUDAExecutionProvider here (onnxruntime-gpu)"
    return KERNEL


KERNEL = _why_no_kernel()
TENSORRT, ONNXRUNTIME_CUDA = _why_no_tensorrt(), _why_no_onnxruntime_cuda()
needs_kernel = pytest.mark.skipif(bool(KERNEL), reason=KERNEL)
needs_tensorrt = pytest.mark.skipif(bool(TENSORRT), reason=TENSORRT)
needs_onnxruntime_cuda = pytest.mark.skipif(bool(ONNXRUNTIME_CUDA), reason=ONNXRUNTIME_CUDA)
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engines(tiny_model_dir, tmp_path_factory):
    from dnd_engines.build import BuildConfig, build_engines
    return build_engines(tiny_model_dir, tmp_path_factory.mktemp("trt") / "engines",
                         BuildConfig(max_batch=3, workspace_gib=1.0, optimization_level=1))


def _first_logits(gen, rows=4):
    gen.backend.reset(rows)
    return gen.backend.stage_step(0, gen.cls_embedding[np.arange(rows) % gen.num_classes][:, None, :])[0].copy()


@needs_tensorrt
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


@needs_tensorrt
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


@needs_tensorrt
def test_build_engine_reports_profiles_that_do_not_fit_the_graph(tiny_model_dir):
    import tensorrt as trt

    from dnd_engines.build import BuildConfig, EngineBuildError, _build_engine, _new_builder
    from dnd_engines.profiles import profile_shapes
    from dnd_sdk.model_folder.manifest import load_manifest

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


def _gpu_folder(backend: str, request) -> object:
    """The folder a GPU backend runs: the TensorRT engines, or the fp32 export itself for ONNX Runtime CUDA."""
    return request.getfixturevalue("engines" if backend == "tensorrt" else "tiny_model_dir")


GPU_BACKENDS = [pytest.param("tensorrt", marks=needs_tensorrt),
                pytest.param("onnxruntime-cuda", marks=needs_onnxruntime_cuda)]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_rows_at_different_positions_match_onnxruntime_cpu(tiny_model_dir, backend, request):
    """Stage graph v2 on the device cache: new rows written into their slots by the kernel, and the cache
    zeroed at reset, against ONNX Runtime CPU on the same calls."""
    from export_helpers import run_calls
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1) as ref, \
            Generator(_gpu_folder(backend, request), backend=backend) as gen:
        assert gen.backend_name == backend
        seqs = [np.concatenate([ref.cls_embedding[[label]], ref.tok_embeddings[c].sum(1)]) for label, c in
                zip((1, 3, 0), np.random.default_rng(0).integers(0, ref.vocab_size, (3, 5, 2)))]
        # row 0 runs on; rows 1 and 2 share a position, then row 2 restarts at 0
        calls = [[(seqs[0][c], c), (seqs[1][c], c), (seqs[2][c % 3], c % 3)] for c in range(6)]
        for _ in range(2):  # the second pass starts from a reset cache
            np.testing.assert_allclose(run_calls(gen.backend, calls), run_calls(ref.backend, calls), atol=1e-3)
        a, b = (g.sample_codes(num=3, seed=0, batch_size=3, temperature=0.0) for g in (ref, gen))
        assert (a == b).mean() >= 0.95


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_a_stage_call_moves_only_its_step_tensors(backend, request):
    """What the backend copies per call is the step's inputs and outputs, at 1 row and at 3; on ONNX Runtime
    every graph tensor is bound to device memory, so it copies nothing of its own."""
    with Generator(_gpu_folder(backend, request), backend=backend) as gen:
        for rows in (1, 3):
            gen.backend.reset(rows)
            cache = gen.backend.cache
            before = (cache.bytes_to_device, cache.bytes_to_host)
            hidden = gen.cls_embedding[np.arange(rows) % gen.num_classes][:, None, :]
            gen.backend.stage_step(0, hidden, np.arange(rows) % 2)
            moved = (cache.bytes_to_device - before[0], cache.bytes_to_host - before[1])
            assert moved == cache.layout.step_bytes(rows)
        if backend == "onnxruntime-cuda":
            io = gen.backend._bindings[0]
            assert {v.device_name().lower() for v in io.get_outputs()} == {"cuda"}


@needs_kernel
@pytest.mark.parametrize("rows", [1, 64])
def test_the_cache_kernel_writes_what_its_reference_writes(rows):
    """The NVRTC-compiled kernel on the GPU against `write_new_rows_reference` on the same bytes: fp32, fp16 and
    bf16 tensors of two shapes, rows at positions that repeat and differ."""
    from dnd_sdk.backends.cuda_runtime import CudaRuntime
    from dnd_sdk.backends.device_cache import (
        KERNEL_NAME,
        KERNEL_SOURCE,
        CacheLayout,
        CacheTensor,
        StepTensor,
        host_memory,
        write_new_rows_reference,
    )
    tensors = [CacheTensor(f"past.{i}", f"new.{i}", dtype, kv, hd)
               for i, (dtype, kv, hd) in enumerate([("float32", 4, 32), ("float16", 24, 64), ("bfloat16", 2, 16)] * 3)]
    layout = CacheLayout([tensors], [StepTensor("positions", "int64", ())], [], max_rows=64, length=33)
    cuda = CudaRuntime()
    stream, kernel = cuda.create_stream(), cuda.compile(KERNEL_SOURCE, KERNEL_NAME)
    base = cuda.malloc(layout.nbytes)
    try:
        before = np.random.default_rng(rows).integers(0, 256, layout.step_offsets["positions"], np.uint8)
        positions = np.random.default_rng(rows + 1).integers(0, 33, rows).astype(np.int64)
        on_device = host_memory(layout)[0]
        on_device[:before.size] = before
        on_device[layout.step_offsets["positions"]:][:positions.nbytes] = positions.view(np.uint8)
        for table, offset in zip(layout.tables(base), layout.table_offsets):  # the device's own addresses
            on_device[offset:offset + table.nbytes] = table.view(np.uint8).ravel()
        cuda.copy_to_device(base, on_device.ctypes.data, layout.nbytes, stream)
        cuda.launch(kernel, layout.launch(0, rows, base), stream)
        result = np.empty(layout.cache_bytes, np.uint8)
        cuda.copy_to_host(result.ctypes.data, base, result.nbytes, stream)
        cuda.synchronize(stream)
    finally:
        cuda.free(base)
        cuda.destroy_stream(stream)
    reference, reference_base = host_memory(layout)
    reference[:before.size] = before
    reference[layout.step_offsets["positions"]:][:positions.nbytes] = positions.view(np.uint8)
    write_new_rows_reference(reference, reference_base, layout.launch(0, rows, reference_base))
    np.testing.assert_array_equal(result, reference[:layout.cache_bytes])
    assert (result != before[:layout.cache_bytes]).any()
