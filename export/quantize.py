"""Weight-only quantization of a float32 stage graph with ONNX Runtime's own tools (in place).

    quantize_weights(Path("stage0.onnx"), "int8")   # MatMul weights int8 (DynamicQuantizeLinear + MatMulInteger)
    quantize_weights(Path("stage0.onnx"), "int4")   # MatMul weights int4 blocks (MatMulNBits)

Only MatMuls whose second input is a weight are rewritten: attention's activation products
stay float32. The operators are ONNX Runtime's, so such graphs are marked ONNX-Runtime-only.
"""
import logging
from pathlib import Path

import onnx

from dnd_sdk.folders import atomic_write

QUANTIZED = ("int8", "int4")
INT4_BLOCK = 32  # MatMulNBits block size along the input dimension


def quantize_weights(path: Path, dtype: str) -> None:
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs every tensor at INFO
    try:
        atomic_write(path, lambda tmp: _quantize(path, tmp, dtype), to_name=True)
    finally:
        root.setLevel(level)


def _quantize(path: Path, tmp: Path, dtype: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if dtype == "int8":
        quantize_dynamic(path, tmp, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], per_channel=True,
                         extra_options={"MatMulConstBOnly": True})
    else:
        quantizer = MatMulNBitsQuantizer(onnx.load(str(path)), block_size=INT4_BLOCK, is_symmetric=True)
        quantizer.process()
        quantizer.model.save_model_to_file(str(tmp), use_external_data_format=False)
