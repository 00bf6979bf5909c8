"""What TensorRT runs (dnd_sdk/backends/tensorrt.py, engines from `dnd-build`): float graphs only."""
from typing import Optional

from ..model_folder.graphs import GraphFacts
from .spec import BackendSpec


class TensorrtSpec(BackendSpec):
    name = "tensorrt"
    runner = "dnd_sdk.backends.tensorrt:TensorrtBackend"

    def supports(self, graphs: GraphFacts) -> Optional[str]:
        integer = graphs.integer_forms
        if integer:  # QLinearConv, MatMulInteger and MatMulNBits: its ONNX parser builds none of them
            return (f"TensorRT does not build ONNX Runtime's own integer operators, which make up this folder's "
                    f"{graphs.describe(integer)}; export with --dtype fp32, fp16 or bf16 and a float --decoder-dtype "
                    "for TensorRT")
        return None
