"""What a model folder's graphs are made of, in the terms a backend judges them by: the stage graphs' dtype,
the decoder's, and the integer operators of the quantized ones (the manifest's `dtype`, `decoder_dtype` and
`quantization`). `Manifest.graphs` reads them from a folder; `dnd-export` knows them before it writes a graph,
so it can ask the backends whether any would run the folder before it spends time on it.

    graphs = GraphFacts("int8", "int8", {"stages": {"op": "MatMulInteger", "pair_limit": 128}})
    graphs.integer_forms      # ["stages", "decoder"]
    graphs.kinds              # "int8 stages, int8 decoder"
"""
from dataclasses import dataclass, field
from typing import Any

from .schema import INTEGER_DTYPES

FORMS = ("stages", "decoder")  # the graph forms of a folder: its stage graphs, and its decoder graph


@dataclass(frozen=True)
class GraphFacts:
    dtype: str  # the stage graphs': one of schema.DTYPES
    # the decoder graph's: one of schema.DECODER_DTYPES, or "" in folders written before it was recorded,
    # whose decoders are all float
    decoder_dtype: str = ""
    # form -> facts of its integer kernels (`op`, and for int8 weights `pair_limit`); {} for float graphs and
    # in folders written before it was recorded
    quantization: dict[str, dict[str, Any]] = field(default_factory=dict)

    def form_dtype(self, form: str) -> str:
        return self.dtype if form == "stages" else self.decoder_dtype or "float"

    @property
    def integer_forms(self) -> list[str]:
        """The forms built from integer operators (int8/int4: ONNX Runtime's quantized kernels)."""
        return [form for form in FORMS if self.form_dtype(form) in INTEGER_DTYPES]

    @property
    def unbounded_int8_forms(self) -> list[str]:
        """The int8 forms whose weights carry no `pair_limit` (exported before weights were bounded): on CPUs
        without VNNI, ONNX Runtime's integer kernels saturate on them (docs/architecture.md)."""
        return [form for form in FORMS
                if self.form_dtype(form) == "int8" and "pair_limit" not in self.quantization.get(form, {})]

    def describe(self, forms: list[str]) -> str:
        """`forms` in words with their operators where recorded: "int8 stage graphs (MatMulInteger) and int8
        decoder (QLinearConv)"."""
        words = {"stages": "{} stage graphs", "decoder": "{} decoder"}
        parts = []
        for form in forms:
            op = self.quantization.get(form, {}).get("op")
            parts.append(words[form].format(self.form_dtype(form)) + (f" ({op})" if op else ""))
        return " and ".join(parts)

    @property
    def kinds(self) -> str:
        """The graphs' precisions in words, e.g. "int8 stages, int8 decoder"."""
        return f"{self.dtype} stages, {self.form_dtype('decoder')} decoder"
