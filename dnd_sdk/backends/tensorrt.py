"""TensorRT backend: the engines `dnd-build` wrote, on CUDA device 0 (tensorrt, cuda-python's runtime bindings).

The KV cache never leaves the GPU. Each cache tensor is one fixed device buffer
[max_rows, kv_heads, L, head_dim] (stage graph v2); a step's new key/value rows land in a
scratch buffer and are copied into each row's slot with one strided 2-D copy per run of rows
at the same position. The hidden state, positions and mask go in, and logits and hidden
state come out, through host memory, because the numpy sampler runs between stages.
"""
from pathlib import Path
from typing import Any, Optional

import numpy as np

try:
    import tensorrt as trt
except ImportError as e:
    raise ImportError(f"TensorRT is not installed ({e}); pip install 'dnd-sdk[gpu]' (README, 'GPU install')") from None

from ..engine_index import ENGINES_NAME, load_engine_index, read_plan, tensorrt_major
from ..errors import BackendUnavailableError, InvalidInputError
from ..manifest import Manifest
from .base import Backend, RowPositions
from .cuda_runtime import DEVICE_TO_HOST, HOST_TO_DEVICE, CudaRuntime

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
        manifest (dnd_sdk.manifest.Manifest): its loaded, verified manifest.
        threads: ignored (the work runs on the GPU).
    """
    name = "tensorrt"
    max_batch: int  # the engines' profile: never None here
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
        self.engines, self._caches, self._scratch, self._host, self._buffers = {}, [], {}, {}, []
        d, vocab = int(manifest.model_config["dim"]), int(manifest.model_config["vocab_size"])
        self._hidden_out, self._logits = self._new_buffer(), self._new_buffer()
        try:  # a failure part-way (an engine from another TensorRT) must not leak what is allocated
            runtime = trt.Runtime(_LOGGER)
            for g in graphs:
                self.engines[g] = Engine(runtime, read_plan(model_dir, index, g), Path(model_dir) / index.files[g].file,
                                         index.tensorrt_version)
            self._hidden_out.ensure(self.max_batch * d * 4)
            self._logits.ensure(self.max_batch * vocab * 4)
            self._caches = [self._cache_buffers(k) for k in range(manifest.depth)]
        except BaseException:
            self.close()
            raise
        self._positions = RowPositions(manifest.depth, 0, manifest.cache_length)

    def _cache_buffers(self, k: int) -> list:
        """[(past name, new name, shape [kv_heads, L, head_dim], itemsize, cache buffer, new-rows buffer)] of stage k."""
        stage, engine = self.manifest.stages[k], self.engines[self.manifest.stages[k].graph]
        specs = {s.name: s for s in self.manifest.inputs(stage.graph)}
        out = []
        for layer in stage.layers:
            for past, new in zip(self.manifest.past_names(layer), self.manifest.new_names(layer)):
                shape, size = tuple(int(d) for d in specs[past].shape[1:]), engine.itemsize[past]
                cache, fresh = self._new_buffer(), self._new_buffer()
                cache.ensure(self.max_batch * int(np.prod(shape)) * size)
                fresh.ensure(self.max_batch * shape[0] * shape[2] * size)
                out.append((past, new, shape, size, cache, fresh))
        return out

    def _new_buffer(self) -> DeviceBuffer:
        self._buffers.append(DeviceBuffer(self.cuda))  # every buffer is registered, so close() frees it whatever failed
        return self._buffers[-1]

    def _scratch_buffer(self, key: tuple) -> DeviceBuffer:
        if key not in self._scratch:
            self._scratch[key] = self._new_buffer()
        return self._scratch[key]

    def _host_buffer(self, key: tuple, shape: tuple, dtype: Any = np.float32) -> np.ndarray:
        if key not in self._host or self._host[key].shape != shape:
            self._host[key] = np.empty(shape, dtype=dtype)
        return self._host[key]

    def _execute(self, engine: Engine) -> None:
        if not engine.context.execute_async_v3(self.cuda.stream_handle(self.stream)):
            raise RuntimeError("TensorRT failed to run an engine; its log above says why")

    def run(self, graph: str, feeds: dict) -> dict:
        engine = self.engines[graph]
        ctx = engine.context
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
        for tensors in self._caches:  # masked slots still enter the products (times a zero weight): no NaN may stay
            for _, _, _, _, cache, _ in tensors:
                self.cuda.zero(cache.ptr, cache.nbytes, self.stream)

    def stage_step(self, k: int, hidden: np.ndarray, positions: Optional[np.ndarray] = None) -> tuple:
        engine = self.engines[self.manifest.stages[k].graph]
        ctx = engine.context
        hidden = np.ascontiguousarray(hidden, dtype=np.float32)
        rows = hidden.shape[0]
        positions, kv_mask = self._positions.take(k, rows, positions)
        for name, array in (("hidden", hidden), ("positions", positions), ("kv_mask", kv_mask)):
            buf = self._scratch_buffer((name,))
            self.cuda.copy(buf.ensure(array.nbytes), array.ctypes.data, array.nbytes, HOST_TO_DEVICE, self.stream)
            engine.set_shape(name, array.shape)
            ctx.set_tensor_address(name, buf.ptr)
        for past, new, shape, _, cache, fresh in self._caches[k]:
            engine.set_shape(past, (rows, *shape))
            ctx.set_tensor_address(past, cache.ptr)
            ctx.set_tensor_address(new, fresh.ptr)
        logits = self._host_buffer((k, "logits"), (rows, int(self.manifest.model_config["vocab_size"])))
        hidden_out = self._host_buffer((k, "hidden_out"), hidden.shape)
        ctx.set_tensor_address("logits", self._logits.ptr)
        ctx.set_tensor_address("hidden_out", self._hidden_out.ptr)
        self._execute(engine)
        for _, _, shape, size, cache, fresh in self._caches[k]:
            self._write_rows(cache, fresh, shape, size, positions)
        for host, device in ((logits, self._logits), (hidden_out, self._hidden_out)):
            self.cuda.copy(host.ctypes.data, device.ptr, host.nbytes, DEVICE_TO_HOST, self.stream)
        self.cuda.synchronize(self.stream)
        return logits, hidden_out

    def _write_rows(self, cache: DeviceBuffer, fresh: DeviceBuffer, shape: tuple, size: int,
                    positions: np.ndarray) -> None:
        """New rows [rows, kv, 1, hd] into cache [rows, kv, L, hd] at each row's position, on the device.

        Rows r..s-1 at one position p form (s - r) * kv blocks of hd elements, evenly strided
        (L * hd apart) in the cache: one cudaMemcpy2DAsync per run of equal positions.
        """
        kv, length, hd = shape
        row_bytes, start = hd * size, 0
        for end in range(1, len(positions) + 1):
            if end < len(positions) and positions[end] == positions[start]:
                continue
            dst = cache.ptr + ((start * kv * length) + int(positions[start])) * row_bytes
            src = fresh.ptr + start * kv * row_bytes
            self.cuda.copy_rows(dst, length * row_bytes, src, row_bytes, row_bytes, (end - start) * kv, self.stream)
            start = end

    def close(self) -> None:
        for buf in self._buffers:
            buf.free()
        self.engines, self._caches, self._scratch, self._host, self._buffers = {}, [], {}, {}, []
        if self.stream is not None:
            self.cuda.destroy_stream(self.stream)
            self.stream = None
