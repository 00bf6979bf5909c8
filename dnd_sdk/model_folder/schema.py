"""The names and values a manifest.json may hold, apart from the code that reads and checks it:
`dnd_sdk.model_folder.manifest` (reading, writing) and `.checks` (values) both import them from here,
so neither has to import the other back.
"""
from ..sampler import STORED_SETTINGS

DTYPES = ("fp32", "fp16", "bf16", "int8", "int4", "int4-int8")
# stage dtypes whose graphs hold 4-bit MatMulNBits (int4-int8: int4 feed-forward, int8 attention and heads)
NBITS_DTYPES = ("int4", "int4-int8")
DECODER_DTYPES = ("fp32", "fp16", "int8")  # the decoder graph's own: int8 is ONNX Runtime's QLinearConv
INTEGER_DTYPES = ("int8", *NBITS_DTYPES)  # graphs of ONNX Runtime's quantized integer operators
TENSOR_DTYPES = ("float32", "float16", "bfloat16", "int64", "uint8", "uint16", "bool")
DIM_NAMES = ("batch_size",)
# the KV cache's element type for each stage dtype: quantized graphs keep their caches in float32
CACHE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "float32", "int4": "float32",
                "int4-int8": "float32"}
# the keys `sampler_defaults` may hold: SamplingParams' stored settings (a missing one takes the sampler's default)
SAMPLER_KEYS = STORED_SETTINGS
KV_TEMPLATES = {"past_key": "past_key_values.%d.key", "past_value": "past_key_values.%d.value",
                "new_key": "new_key_values.%d.key", "new_value": "new_key_values.%d.value"}
