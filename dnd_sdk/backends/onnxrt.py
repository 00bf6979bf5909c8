"""ONNX Runtime backend: one session per graph, the KV cache kept as OrtValues between steps.

Each stage call binds the previous step's `present.*` OrtValues as this step's
`past_key_values.*` through IO binding, so the cache never travels through numpy (or,
with CUDA, off the device). Logits and hidden state land in preallocated host buffers.
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
from ..model_files import RERUN, graph_session
from .base import Backend

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# ONNX TensorProto element types, so that an empty bf16 cache needs neither numpy bf16 nor the onnx package
ONNX_TYPES = {"float32": 1, "float16": 10, "bfloat16": 16}


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


def _checked_session(manifest, name: str, provider: str, threads) -> ort.InferenceSession:
    """The verified graph `name` in a session whose inputs and outputs are the ones the manifest declares."""
    open_session = lambda model, folder: session_from_onnx(model, provider, threads, folder)  # noqa: E731
    try:
        session = graph_session(manifest, name, open_session)
    except Exception as e:  # ONNX Runtime raises its own classes: InvalidProtobuf, Fail, InvalidGraph...
        if type(e).__module__ != ort_errors.__name__ or isinstance(e, OrtNotImplemented):
            raise
        raise ManifestError(f"{manifest.files[name].file}: ONNX Runtime cannot load it ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}). {RERUN}") from None
    for key, args in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        declared = {s.name: list(s.shape) for s in getattr(manifest, key)(name)}
        actual = {a.name: list(a.shape) for a in args}
        if declared != actual:
            raise ManifestError(f"{manifest.files[name].file}: the graph's {key} {actual} differ from manifest.json's "
                                f"{declared}. {RERUN}")
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
        self._past, self._buffers = [], {}

    def run(self, graph: str, feeds: dict) -> dict:
        session = self.sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    def reset(self, rows: int) -> None:
        self._past = []
        for stage in self.manifest.stages:
            specs = {s.name: s for s in self.manifest.inputs(stage.graph)}
            past = {}
            for layer in stage.layers:
                for name in self.manifest.past_names(layer):
                    spec = specs[name]  # [batch_size, kv_heads, past_sequence_length, head_dim]
                    past[name] = ort.OrtValue.ortvalue_from_shape_and_type(
                        [rows, spec.shape[1], 0, spec.shape[3]], ONNX_TYPES[spec.dtype], self.device, 0)
            self._past.append(past)
        self._buffers = {}

    def _buffer(self, k: int, name: str, shape: tuple) -> np.ndarray:
        key = (k, name, shape)
        if key not in self._buffers:
            self._buffers[key] = np.empty(shape, dtype=np.float32)
        return self._buffers[key]

    def stage_step(self, k: int, hidden: np.ndarray) -> tuple:
        stage, io = self.manifest.stages[k], self._bindings[k]
        hidden = np.ascontiguousarray(hidden, dtype=np.float32)
        rows = hidden.shape[0]
        logits = self._buffer(k, "logits", (rows, int(self.manifest.model_config["vocab_size"])))
        hidden_out = self._buffer(k, "hidden_out", hidden.shape)
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        io.bind_cpu_input("hidden", hidden)
        for name, value in self._past[k].items():
            io.bind_ortvalue_input(name, value)
        for name, buf in (("logits", logits), ("hidden_out", hidden_out)):
            io.bind_output(name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
        presents = [(past, present) for layer in stage.layers
                    for past, present in zip(self.manifest.past_names(layer), self.manifest.present_names(layer))]
        for _, present in presents:
            io.bind_output(present, self.device)  # ONNX Runtime allocates; it grows by one position per step
        self.sessions[stage.graph].run_with_iobinding(io)
        values = io.get_outputs()[2:]  # in binding order: logits, hidden_out, then the presents
        self._past[k] = {past: value for (past, _), value in zip(presents, values)}
        return logits, hidden_out

    def close(self) -> None:
        self.sessions, self._bindings, self._past, self._buffers = {}, [], [], {}
