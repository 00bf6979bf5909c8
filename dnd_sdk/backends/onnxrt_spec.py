"""What ONNX Runtime runs (dnd_sdk/backends/onnxrt.py), on CUDA or on the CPU: every graph but bf16 stages, and on a
CPU without VNNI no int8 graph quantized before its weights were bounded."""
from typing import Any, Optional

from ..cpu import cpu_features
from ..model_folder.graphs import GraphFacts
from .spec import BackendSpec

DEVICES = ("cuda", "cpu")


class OnnxruntimeSpec(BackendSpec):
    runner = "dnd_sdk.backends.onnxrt:OnnxrtBackend"

    def __init__(self, device: str) -> None:
        if device not in DEVICES:
            raise ValueError(f"device {device!r} is not one of {DEVICES}")
        self.device, self.name = device, f"onnxruntime-{device}"

    def options(self) -> dict[str, Any]:
        return {"device": self.device}

    def supports(self, graphs: GraphFacts) -> Optional[str]:
        if graphs.dtype == "bf16":  # ONNX Runtime's CPU kernels and numpy (the CPU cache) have no bfloat16
            return ("bf16 stage graphs run on TensorRT (dnd-build); export with --dtype fp32 or fp16 for "
                    "ONNX Runtime")
        unbounded = graphs.unbounded_int8_forms
        if self.device == "cpu" and unbounded and not cpu_features().has_int8_dot():
            # without VNNI, u8 x s8 pairs add in 16-bit lanes and saturate on weights that were not bounded
            return (f"the int8 {' and '.join(unbounded)} of this folder were quantized before dnd-sdk bounded int8 "
                    "weights, and on this CPU (no AVX-512 VNNI or AVX-VNNI) ONNX Runtime's integer kernels would "
                    "saturate and spoil the images. Export it again with dnd-export (same --dtype and "
                    "--decoder-dtype); the new folder runs the same on every CPU")
        return None
