"""ONNX Runtime backend: one session per graph, the KV cache in fixed numpy buffers.

Stage graphs v2 take the whole fixed cache and return only each row's new key/value; the
backend writes those into the row's slot of its preallocated `[rows, kv_heads, L, head_dim]`
buffers. On the CPU, IO binding reads the buffers in place, so they are bound once per
reset and nothing is copied per step. With CUDA the buffers are copied to the device per
call (the TensorRT backend keeps its cache on the GPU). The hidden state, positions and mask
go in, and logits, hidden state and new rows come out, through host buffers bound once per
reset: a call copies its inputs into them instead of binding new arrays.
"""
import numpy as np

try:
    import onnxruntime as ort
except ImportError as e:  # the base install leaves the choice of onnxruntime or onnxruntime-gpu to an extra
    raise ImportError(f"ONNX Runtime is not installed ({e}); pip install 'dnd-sdk[cpu]', or 'dnd-sdk[gpu]' on an "
                      "NVIDIA machine (never both: they install the same module)") from None
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

from ..errors import BackendUnavailableError, ManifestError
from ..manifest_checks import spec_text
from ..model_files import RERUN, graph_session
from .base import Backend, RowPositions

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def session_from_onnx(model, provider: str, threads=None, external_folder=None) -> ort.InferenceSession:
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


def _checked_session(manifest, name: str, provider: str, threads) -> ort.InferenceSession:
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
        manifest (dnd_sdk.manifest.Manifest): its loaded, verified manifest.
        device (str): "cpu" or "cuda".
        threads (Optional[int]): intra-op threads per session; None lets ONNX Runtime use every core.
    """

    def __init__(self, model_dir, manifest, *, device: str = "cpu", threads=None):
        provider = PROVIDERS[device]
        available = ort.get_available_providers()
        if provider not in available:
            raise BackendUnavailableError(
                f"ONNX Runtime here has no {provider} (available: {available}). "
                "Install onnxruntime-gpu for CUDA, or use backend='onnxruntime-cpu'.")
        if manifest.dtype == "bf16":  # the cache lives in numpy buffers, and numpy has no bfloat16
            raise BackendUnavailableError("bf16 exports run on TensorRT (dnd-build); export with --dtype fp32 or "
                                          "fp16 for ONNX Runtime")
        self.name, self.device, self.manifest = f"onnxruntime-{device}", device, manifest
        try:
            self.sessions = {name: _checked_session(manifest, name, provider, threads)
                             for name in [*manifest.stage_names, "decoder"]}
        except OrtNotImplemented as e:  # e.g. bf16 graphs: ONNX Runtime's CPU kernels lack bf16
            raise BackendUnavailableError(
                f"ONNX Runtime {device} has no kernels for this {manifest.dtype} model ({str(e).splitlines()[0]}). "
                "Use TensorRT, or export with --dtype fp32 (CPU) or fp16.") from None
        used = self.sessions["decoder"].get_providers()
        if provider not in used:  # ONNX Runtime falls back silently when the CUDA libraries fail to load
            raise BackendUnavailableError(f"ONNX Runtime could not start {provider} (sessions run on {used}); "
                                          "check the CUDA and cuDNN installation.")
        self._bindings = [self.sessions[s.graph].io_binding() for s in manifest.stages]
        self._caches, self._outputs = [], []
        # ONNX Runtime's 4-bit MatMulNBits takes a one-row path on CPUs without AVX-512 VNNI whose float sums
        # differ from its many-row path: a lone row runs beside a copy of itself, so its bits are the same
        # in a call of any size (the runtime promises an image that never depends on its batch)
        self._min_rows = 2 if manifest.dtype == "int4" else 1

    def run(self, graph: str, feeds: dict) -> dict:
        session = self.sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    def reset(self, rows: int) -> None:
        m = self.manifest
        self._positions = RowPositions(m.depth, rows, m.cache_length)
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

    def stage_step(self, k: int, hidden: np.ndarray, positions=None) -> tuple:
        rows = hidden.shape[0]
        positions, kv_mask = self._positions.take(k, rows, positions)
        run_rows = max(rows, self._min_rows)
        for name, array in (("hidden", hidden), ("positions", positions), ("kv_mask", kv_mask)):
            self._inputs[name][:rows] = array
            self._inputs[name][rows:run_rows] = array[:1]  # the lone row's copy; its outputs are dropped
        if self._bound_rows[k] != run_rows or self.device != "cpu":  # a CUDA session copies its inputs when bound
            self._bind(k, run_rows)
        self.sessions[self.manifest.stages[k].graph].run_with_iobinding(self._bindings[k])
        for _, _, cache, fresh in self._caches[k]:  # each row's new key/value into its own slot
            cache[np.arange(rows), :, positions] = fresh[:rows, :, 0]
        logits, hidden_out = self._outputs[k]
        return logits[:rows], hidden_out[:rows]

    def close(self) -> None:
        self.sessions, self._bindings, self._caches, self._outputs = {}, [], [], []
