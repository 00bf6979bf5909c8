"""TensorRT backend: the engines `dnd-build` wrote, on CUDA device 0 (tensorrt, cuda-python's runtime bindings).

The KV cache never leaves the GPU: `device_cache.DeviceCache`, shared with ONNX Runtime CUDA,
holds every cache tensor [max_rows, kv_heads, L, head_dim] (stage graph v2) in one allocation
made when the engines are opened, and writes each call's new key/value rows into their slots
with one kernel launch. The hidden state, positions and mask go in, and logits and hidden
state come out, through host memory, because the numpy sampler runs between stages.
"""
from pathlib import Path
from typing import Any, Optional

import numpy as np

try:
    import tensorrt as trt
except ImportError as e:
    raise ImportError(f"TensorRT is not installed ({e}); pip install 'dnd-sdk[gpu]' (README, 'GPU install')") from None

from ..errors import BackendUnavailableError, InvalidInputError
from ..model_folder.engine_index import ENGINES_NAME, load_engine_index, read_plan, tensorrt_major
from ..model_folder.manifest import Manifest
from .base import Backend, RowPositions
from .cuda_runtime import DEVICE_TO_HOST, HOST_TO_DEVICE, CudaRuntime
from .device_cache import KERNEL_NAME, KERNEL_SOURCE, CacheLayout, DeviceCache

_LOGGER = trt.Logger(trt.Logger.WARNING)


class DeviceBuffer:
    """Device memory from cudaMalloc, allocated by `ensure` and grown on demand (contents do not survive growing)."""

    def __init__(self, cuda: CudaRuntime):
        self.cuda, self.ptr, self.nbytes = cuda, 0, 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes or not self.ptr:
            self.free()
            self.ptr, self.nbytes = self.cuda.malloc(max(nbytes, 1)), nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            self.cuda.free(self.ptr)
        self.ptr, self.nbytes = 0, 0


class Engine:
    """One deserialized engine, its execution context and the names and dtypes of its I/O tensors."""

    def __init__(self, runtime: Any, plan: bytes, path: Path, built_with: str):
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:  # TensorRT logged why: usually another GPU or TensorRT version
            raise BackendUnavailableError(
                f"TensorRT {trt.__version__} could not load {path} (built with TensorRT {built_with}, maybe for "
                "another GPU); engines are specific to both. Rebuild them here with `dnd-build`.")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailableError(f"TensorRT could not create an execution context for {path} "
                                          "(out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.itemsize = {n: self.engine.get_tensor_dtype(n).itemsize for n in names}

    def set_shape(self, name: str, shape: tuple) -> None:
        if not self.context.set_input_shape(name, tuple(shape)):
            low, _, high = self.engine.get_tensor_profile_shape(name, 0)
            raise InvalidInputError(f"input {name!r} of shape {tuple(shape)} is outside the engine's profile "
                                    f"({tuple(low)} .. {tuple(high)}); rebuild with dnd-build for larger sizes")

    def numpy_dtype(self, name: str) -> np.dtype:
        try:
            return np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
        except TypeError:  # bf16 has no numpy type; only KV caches use it, and they stay on the GPU
            raise InvalidInputError(f"tensor {name!r} is {self.engine.get_tensor_dtype(name)}, which numpy cannot "
                                    "hold; run this graph through Generator instead of run()") from None


class TensorrtBackend(Backend):
    """TensorRT engines from an engine folder (`dnd-build MODEL_DIR -o ENGINE_DIR`).

    Args:
        model_dir (Path): the engine folder: an exported folder plus engines/*.plan and engines.json.
        manifest (dnd_sdk.model_folder.manifest.Manifest): its loaded, verified manifest.
        threads: ignored (the work runs on the GPU).
    """
    name = "tensorrt"
    max_batch: int  # the engines' profile: never None here
    # run() shares the stage calls' stream (its synchronize would wait on theirs, and theirs on it) and
    # resets their bindings; the scheduler makes the decoder and the stages take turns
    decodes_beside_steps = False
    _scratch: dict[tuple, DeviceBuffer]
    _host: dict[tuple, np.ndarray]
    _buffers: list[DeviceBuffer]  # every buffer, freed by close()

    def __init__(self, model_dir: Path, manifest: Manifest, *, threads: Optional[int] = None) -> None:
        graphs = [*manifest.stage_names, "decoder"]
        index = load_engine_index(model_dir, graphs, verify=False)  # each plan is checked as it is read
        if index is None:
            raise BackendUnavailableError(f"{model_dir} has no {ENGINES_NAME}, so no TensorRT engines; build them "
                                          f"with `dnd-build {model_dir} -o ENGINE_DIR` and load ENGINE_DIR")
        tensorrt_major(trt.__version__)
        self.cuda = CudaRuntime()  # BackendUnavailableError without a usable driver and GPU
        self.stream = self.cuda.create_stream()
        self.manifest, self.max_batch = manifest, int(index.max_rows)
        self.engines, self._scratch, self._buffers, self.cache = {}, {}, [], None
        try:  # a failure part-way (an engine from another TensorRT) must not leak what is allocated
            runtime = trt.Runtime(_LOGGER)
            for g in graphs:
                self.engines[g] = Engine(runtime, read_plan(model_dir, index, g), Path(model_dir) / index.files[g].file,
                                         index.tensorrt_version)
            kernel = self.cuda.compile(KERNEL_SOURCE, KERNEL_NAME)
            self.cache = DeviceCache(self.cuda, CacheLayout.of(manifest, self.max_batch), self.stream, kernel)
        except BaseException:
            self.close()
            raise
        self._positions = RowPositions(manifest.depth, 0, manifest.cache_length)
        self._bound_rows = [None] * manifest.depth

    def _new_buffer(self) -> DeviceBuffer:
        self._buffers.append(DeviceBuffer(self.cuda))  # every buffer is registered, so close() frees it whatever failed
        return self._buffers[-1]

    def _scratch_buffer(self, key: tuple) -> DeviceBuffer:
        if key not in self._scratch:
            self._scratch[key] = self._new_buffer()
        return self._scratch[key]

    def _execute(self, engine: Engine) -> None:
        if not engine.context.execute_async_v3(self.cuda.stream_handle(self.stream)):
            raise RuntimeError("TensorRT failed to run an engine; its log above says why")

    def run(self, graph: str, feeds: dict) -> dict:
        engine = self.engines[graph]
        ctx = engine.context
        self._bound_rows = [None] * self.manifest.depth  # a stage graph run here is bound to scratch buffers now
        missing = [n for n in engine.inputs if n not in feeds]
        if missing:
            raise InvalidInputError(f"graph {graph!r} needs the inputs {missing}")
        for name in engine.inputs:
            array = np.ascontiguousarray(feeds[name], dtype=engine.numpy_dtype(name))
            engine.set_shape(name, array.shape)
            buf = self._scratch_buffer((graph, name))
            self.cuda.copy(buf.ensure(array.nbytes), array.ctypes.data, array.nbytes, HOST_TO_DEVICE, self.stream)
            ctx.set_tensor_address(name, buf.ptr)
        results = {}
        for name in engine.outputs:
            results[name] = np.empty(tuple(ctx.get_tensor_shape(name)), dtype=engine.numpy_dtype(name))
            buf = self._scratch_buffer((graph, name))
            ctx.set_tensor_address(name, buf.ensure(results[name].nbytes))
        self._execute(engine)
        for name, array in results.items():
            self.cuda.copy(array.ctypes.data, self._scratch[(graph, name)].ptr, array.nbytes, DEVICE_TO_HOST,
                           self.stream)
        self.cuda.synchronize(self.stream)
        return results

    def reset(self, rows: int) -> None:
        if rows > self.max_batch:
            raise InvalidInputError(f"{rows} rows, but the engines were built for at most {self.max_batch}; "
                                    "use a smaller batch or rebuild with a larger --max-batch")
        self._positions = RowPositions(self.manifest.depth, rows, self.manifest.cache_length)
        assert self.cache is not None, "the backend is closed"
        self.cache.reset()

    def stage_step(self, k: int, hidden: np.ndarray, positions: Optional[np.ndarray] = None) -> tuple:
        engine = self.engines[self.manifest.stages[k].graph]
        rows = hidden.shape[0]
        positions, kv_mask = self._positions.take(k, rows, positions)
        cache = self.cache
        assert cache is not None, "the backend is closed"
        if self._bound_rows[k] != rows:  # addresses never change; shapes do with the rows
            for b in cache.layout.bindings(k, rows, cache.base):
                if b.is_input:
                    engine.set_shape(b.name, b.shape)
                engine.context.set_tensor_address(b.name, b.ptr)
            self._bound_rows[k] = rows
        inputs = {"hidden": hidden, "positions": positions, "kv_mask": kv_mask}
        return cache.stage_call(k, inputs, lambda: self._execute(engine))

    def close(self) -> None:
        for buf in self._buffers:
            buf.free()
        if self.cache is not None:
            self.cache.free()
        self.engines, self._scratch, self._buffers, self.cache = {}, {}, [], None
        if self.stream is not None:
            self.cuda.destroy_stream(self.stream)
            self.stream = None
