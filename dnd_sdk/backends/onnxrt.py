"""ONNX Runtime backend: one session per graph, the KV cache in fixed buffers bound through IO binding.

Stage graphs v2 take the whole fixed cache and return only each row's new key/value; the
backend writes those into the row's slot of its preallocated `[rows, kv_heads, L, head_dim]`
buffers. On the CPU the buffers are numpy arrays that IO binding reads in place, so they are
bound once per reset and nothing is copied per step; the hidden state, positions and mask go
in, and logits, hidden state and new rows come out, through host buffers bound once per
reset: a call copies its inputs into them instead of binding new arrays. With CUDA every
buffer is device memory (`device_cache.DeviceCache`, shared with the TensorRT backend): the
graph is bound to device addresses, the new rows are written into their slots on the GPU,
and only the step's inputs and outputs cross the bus.
"""
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

try:
    import onnxruntime as ort
except ImportError as e:  # the base install leaves the choice of onnxruntime or onnxruntime-gpu to an extra
    raise ImportError(f"ONNX Runtime is not installed ({e}); pip install 'dnd-sdk[cpu]', or 'dnd-sdk[gpu]' on an "
                      "NVIDIA machine (never both: they install the same module)") from None
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

from ..errors import BackendUnavailableError, ManifestError
from ..model_folder.checks import spec_text
from ..model_folder.files import RERUN, graph_session
from ..model_folder.manifest import Manifest
from ..model_folder.schema import NBITS_DTYPES
from .base import Backend, RowPositions
from .onnxrt_spec import OnnxruntimeSpec

if TYPE_CHECKING:
    from .device_cache import DeviceCache

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def session_from_onnx(model: bytes | str | Path, provider: str, threads: Optional[int] = None,
                      external_folder: Optional[Path] = None) -> ort.InferenceSession:
    """An InferenceSession of `model` (a path, or the bytes of a graph whose external data lies in
    `external_folder`) on exactly `provider`, with `threads` intra-op threads (None: one per core)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or 0)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # D + 1 sessions take turns; threads spinning after one session's call would steal cores from the next
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if external_folder is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_folder))
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts, providers=[provider])


def _dtype_name(ort_type: str) -> str:
    """A manifest's name for ONNX Runtime's element type: "tensor(float)" -> "float32"."""
    name = ort_type.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64"}.get(name, name)


def _checked_session(manifest: Manifest, name: str, provider: str, threads: Optional[int]) -> ort.InferenceSession:
    """The verified graph `name` in a session whose inputs and outputs (names, element types, shapes) are
    the ones the manifest declares: the backend allocates and binds its buffers from those."""
    open_session = lambda model, folder: session_from_onnx(model, provider, threads, folder)  # noqa: E731
    try:
        session = graph_session(manifest, name, open_session)
    except Exception as e:  # ONNX Runtime raises its own classes: InvalidProtobuf, Fail, InvalidGraph...
        if type(e).__module__ != ort_errors.__name__ or isinstance(e, OrtNotImplemented):
            raise
        raise ManifestError(f"{manifest.files[name].file}: ONNX Runtime cannot load it ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}). {RERUN}") from None
    for key, args in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        declared = {s.name: (s.dtype, list(s.shape)) for s in getattr(manifest, key)(name)}
        actual = {a.name: (_dtype_name(a.type), list(a.shape)) for a in args}
        wrong = [f"{n} is {spec_text(actual.get(n))} in the graph, {spec_text(declared.get(n))} in manifest.json"
                 for n in sorted(declared.keys() | actual.keys()) if declared.get(n) != actual.get(n)]
        if wrong:
            raise ManifestError(f"{manifest.files[name].file}: the graph's {key} differ from manifest.json: "
                                f"{'; '.join(wrong[:4])}. {RERUN}")
    return session


class OnnxrtBackend(Backend):
    """ONNX Runtime on the CPU or, with onnxruntime-gpu, on CUDA device 0.

    Args:
        model_dir (Path): the exported model folder.
        manifest (dnd_sdk.model_folder.manifest.Manifest): its loaded, verified manifest.
        device (str): "cpu" or "cuda".
        threads (Optional[int]): intra-op threads per session; None lets ONNX Runtime use every core.
    """
    # the decoder is a session of its own, and InferenceSession.run is thread-safe; it shares no buffer, binding
    # or stream with the stage calls (on CUDA it runs on ONNX Runtime's stream, not the cache's)
    decodes_beside_steps = True
    _caches: list  # per stage: [(past name, new name, cache, new rows)]
    _outputs: list  # per stage: (logits, hidden_out)
    _bound_rows: list  # per stage: the rows bound, or None

    def __init__(self, model_dir: Path, manifest: Manifest, *, device: str = "cpu",
                 threads: Optional[int] = None) -> None:
        provider = PROVIDERS[device]
        available = ort.get_available_providers()
        if provider not in available:
            raise BackendUnavailableError(
                f"ONNX Runtime here has no {provider} (available: {available}). "
                "Install onnxruntime-gpu for CUDA, or use backend='onnxruntime-cpu'.")
        refusal = OnnxruntimeSpec(device).supports(manifest.graphs)  # what `auto` asks, for a backend built directly
        if refusal is not None:
            raise BackendUnavailableError(refusal)
        self.name, self.device, self.manifest = f"onnxruntime-{device}", device, manifest
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.cache: Optional[DeviceCache] = None
        self.stream: Any = None
        if device == "cuda":  # before the sessions: without NVRTC, `auto` moves on at once
            self._open_device()
        try:
            self._open_sessions(provider, threads)
        except BaseException:
            self.close()  # the device's stream and kernel, when there is one
            raise
        self._bindings = [self.sessions[s.graph].io_binding() for s in manifest.stages]
        self._caches, self._outputs = [], []
        # ONNX Runtime's CPU 4-bit MatMulNBits takes a one-row path on CPUs without AVX-512 VNNI whose float
        # sums differ from its many-row path: a lone row runs beside a copy of itself, so its bits are the
        # same in a call of any size (the runtime promises an image that never depends on its batch)
        self._min_rows = 2 if manifest.dtype in NBITS_DTYPES else 1

    def _open_sessions(self, provider: str, threads: Optional[int]) -> None:
        manifest = self.manifest
        try:
            self.sessions = {name: _checked_session(manifest, name, provider, threads)
                             for name in [*manifest.stage_names, "decoder"]}
        except OrtNotImplemented as e:  # e.g. bf16 graphs: ONNX Runtime's CPU kernels lack bf16
            raise BackendUnavailableError(
                f"ONNX Runtime {self.device} has no kernels for this {manifest.dtype} model "
                f"({str(e).splitlines()[0]}). Use TensorRT, or export with --dtype fp32 (CPU) or fp16.") from None
        used = self.sessions["decoder"].get_providers()
        if provider not in used:  # ONNX Runtime falls back silently when the CUDA libraries fail to load
            raise BackendUnavailableError(f"ONNX Runtime could not start {provider} (sessions run on {used}); "
                                          "check the CUDA and cuDNN installation.")

    def _open_device(self) -> None:
        """CUDA device 0 through cuda-python, a stream, and the kernel that writes new rows into the cache."""
        try:
            from .cuda_runtime import CudaRuntime
        except ImportError as e:
            raise BackendUnavailableError(
                f"ONNX Runtime CUDA keeps the KV cache on the GPU through cuda-python: {e}") from None
        from .device_cache import KERNEL_NAME, KERNEL_SOURCE
        self.cuda = CudaRuntime()
        self.stream = self.cuda.create_stream()
        try:
            self._kernel = self.cuda.compile(KERNEL_SOURCE, KERNEL_NAME)
        except BaseException:
            self.close()
            raise

    def run(self, graph: str, feeds: dict) -> dict:
        session = self.sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    def reset(self, rows: int) -> None:
        m = self.manifest
        self._positions = RowPositions(m.depth, rows, m.cache_length)
        if self.device == "cuda":
            self._reset_device(rows)
            return
        rows = max(rows, self._min_rows)
        self._caches, self._outputs, self._bound_rows = [], [], [None] * m.depth
        d, vocab = int(m.model_config["dim"]), int(m.model_config["vocab_size"])
        specs = {s.name: s for s in m.inputs(m.stages[0].graph)}
        # hidden, positions and kv_mask: one set of buffers bound into every stage, filled by each call
        self._inputs = {name: np.zeros((rows, *specs[name].shape[1:]), np.dtype(specs[name].dtype))
                        for name in ("hidden", "positions", "kv_mask")}
        for stage in m.stages:
            specs = {s.name: s for s in m.inputs(stage.graph)}
            self._outputs.append((np.empty((rows, vocab), np.float32), np.empty((rows, 1, d), np.float32)))
            tensors = []
            for layer in stage.layers:
                for past, new in zip(m.past_names(layer), m.new_names(layer)):
                    kv_heads, length, head_dim = specs[past].shape[1:]
                    dtype = np.dtype(specs[past].dtype)
                    tensors.append((past, new, np.zeros((rows, kv_heads, length, head_dim), dtype),
                                    np.empty((rows, kv_heads, 1, head_dim), dtype)))
            self._caches.append(tensors)

    def _bind(self, k: int, rows: int) -> None:
        """Bind the first `rows` rows of stage k's buffers (views: ONNX Runtime on the CPU reads them in place)."""
        io = self._bindings[k]
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        for name, buf in self._inputs.items():
            io.bind_input(name, "cpu", 0, buf.dtype, [rows, *buf.shape[1:]], buf.ctypes.data)
        for name, buf in zip(("logits", "hidden_out"), self._outputs[k]):
            io.bind_output(name, "cpu", 0, buf.dtype, [rows, *buf.shape[1:]], buf.ctypes.data)
        for past, new, cache, fresh in self._caches[k]:
            io.bind_cpu_input(past, cache[:rows])
            io.bind_output(new, "cpu", 0, fresh.dtype, [rows, *fresh.shape[1:]], fresh.ctypes.data)
        self._bound_rows[k] = rows

    def _reset_device(self, rows: int) -> None:
        """A device cache for at least `rows` rows, zeroed: allocated anew only when it must grow."""
        from .device_cache import CacheLayout, DeviceCache
        if self.cache is None or self.cache.layout.max_rows < rows:
            if self.cache is not None:
                self.cache.free()
                self.cache = None
            self.cache = DeviceCache(self.cuda, CacheLayout.of(self.manifest, rows), self.stream, self._kernel)
        else:
            self.cache.reset()
        self._bound_rows = [None] * self.manifest.depth

    def _bind_device(self, k: int, rows: int) -> None:
        """Bind every tensor of stage k to its device address: ONNX Runtime then copies nothing per call."""
        assert self.cache is not None  # reset() made it
        bind_to_addresses(self._bindings[k], self.cache.layout.bindings(k, rows, self.cache.base), "cuda")
        self._bound_rows[k] = rows

    def _stage_step_on_device(self, k: int, hidden: np.ndarray, positions: np.ndarray, kv_mask: np.ndarray) -> tuple:
        cache = self.cache
        assert cache is not None  # reset() made it
        if self._bound_rows[k] != len(positions):
            self._bind_device(k, len(positions))
        io, session = self._bindings[k], self.sessions[self.manifest.stages[k].graph]

        def run_graph() -> None:
            cache.synchronize()  # ONNX Runtime runs on a stream of its own: the inputs must be there first
            session.run_with_iobinding(io)
            io.synchronize_outputs()  # the new rows are complete before the kernel reads them

        return cache.stage_call(k, {"hidden": hidden, "positions": positions, "kv_mask": kv_mask}, run_graph)

    def stage_step(self, k: int, hidden: np.ndarray, positions: Optional[np.ndarray] = None) -> tuple:
        rows = hidden.shape[0]
        positions, kv_mask = self._positions.take(k, rows, positions)
        if self.device == "cuda":
            return self._stage_step_on_device(k, hidden, positions, kv_mask)
        run_rows = max(rows, self._min_rows)
        for name, array in (("hidden", hidden), ("positions", positions), ("kv_mask", kv_mask)):
            self._inputs[name][:rows] = array
            self._inputs[name][rows:run_rows] = array[:1]  # the lone row's copy; its outputs are dropped
        if self._bound_rows[k] != run_rows:
            self._bind(k, run_rows)
        self.sessions[self.manifest.stages[k].graph].run_with_iobinding(self._bindings[k])
        slots = np.arange(rows)
        for _, _, cache, fresh in self._caches[k]:  # each row's new key/value into its own slot
            cache[slots, :, positions] = fresh[:rows, :, 0]
        logits, hidden_out = self._outputs[k]
        return logits[:rows], hidden_out[:rows]

    def close(self) -> None:
        self.sessions, self._bindings, self._caches, self._outputs = {}, [], [], []
        if self.cache is not None:
            self.cache.free()
            self.cache = None
        if self.stream is not None:
            self.cuda.destroy_stream(self.stream)
            self.stream = None


def bind_to_addresses(io: Any, bindings: list, device: str) -> None:
    """Bind each `device_cache.Binding` (name, input or output, dtype, shape, address) into IO binding `io`,
    in memory of `device` ("cuda"; "cpu" for host memory laid out the same way)."""
    io.clear_binding_inputs()
    io.clear_binding_outputs()
    for b in bindings:
        bind = io.bind_input if b.is_input else io.bind_output
        bind(b.name, device, 0, np.dtype(b.dtype), list(b.shape), b.ptr)
