"""Quantization of float32 graphs with ONNX Runtime's own tools (in place).

    quantize_weights(Path("stage0.onnx"), "int8")   # MatMul weights int8 (DynamicQuantizeLinear + MatMulInteger)
    quantize_weights(Path("stage0.onnx"), "int4")   # MatMul weights int4 blocks (MatMulNBits)
    quantize_decoder(Path("decoder.onnx"), codes)   # every Conv int8 (QLinearConv), calibrated on `codes`

In stage graphs only MatMuls whose second input is a weight are rewritten: attention's activation
products stay float32. The decoder's convolutions take int8 activations too, with ranges measured
on calibration codes: ONNX Runtime has no fast kernel for a float convolution with int8 weights, and
its int8 convolution runs the decoder about twice as fast. The operators are ONNX Runtime's, so such
graphs are marked ONNX-Runtime-only.
"""
import logging
from pathlib import Path

import numpy as np
import onnx

from dnd_sdk.folders import atomic_write

QUANTIZED = ("int8", "int4")
INT4_BLOCK = 32  # MatMulNBits block size along the input dimension


def quantize_weights(path: Path, dtype: str) -> None:
    _rewrite(path, lambda tmp: _quantize(path, tmp, dtype))


def quantize_decoder(path: Path, codes: np.ndarray, batch: int = 1) -> None:
    """Rewrite the decoder's Convs as int8 QLinearConv (per-channel weights, activation ranges from the
    min and max each reaches on `codes` [N, h, w, D], run `batch` at a time: only each tensor's min and
    max are kept per run, so memory is one run's activations)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Codes(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(np.array_split(codes, max(1, len(codes) // batch)))

        def get_next(self):
            chunk = next(self.batches, None)
            return None if chunk is None else {"codes": chunk}

    _rewrite(path, lambda tmp: quantize_static(path, tmp, Codes(), quant_format=QuantFormat.QOperator,
                                               per_channel=True, activation_type=QuantType.QUInt8,
                                               weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"]))


def _rewrite(path: Path, quantize) -> None:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    # importing the int4 quantizer runs logging.basicConfig(level=INFO): let it happen here, where the
    # root logger's level and handlers are put back afterwards
    import onnxruntime.quantization.matmul_nbits_quantizer  # noqa: F401
    # the quantizer logs every tensor at INFO, and advice (pre-processing) as warnings
    root.setLevel(max(level, logging.ERROR))
    try:
        atomic_write(path, quantize, to_name=True)
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


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
