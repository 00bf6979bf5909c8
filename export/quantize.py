"""Quantization of float32 graphs, rewritten in place (with their external data, if any).

    extra = quantize_weights(Path("stage0.onnx"), "int8", threshold)  # int8 weights, int8 rows (MatMulInteger)
    extra = quantize_weights(Path("stage0.onnx"), "int4", threshold)  # int4 weight blocks (MatMulNBits)
    extra = quantize_weights(Path("stage0.onnx"), "int4-int8", threshold)  # int4 feed-forward, int8 attention, heads
    extra = quantize_decoder(Path("decoder.onnx"), codes, threshold)  # every Conv int8 (QLinearConv)

Each returns the graph's external data files, as `export_graph` does.

In stage graphs only MatMuls whose second input is a weight are rewritten: attention's activation
products stay float32. Activations are quantized row by row, never over the whole call, so a row's
logits are the same whatever the other rows hold and however many there are (the runtime promises
that an image never depends on its batch): ONNX Runtime's own dynamic quantization takes one scale
for the whole input tensor, which would make every image depend on its neighbours.

The decoder's convolutions take int8 activations too, with fixed ranges measured on calibration
codes: ONNX Runtime has no fast kernel for a float convolution with int8 weights, and its int8
convolution runs the decoder about twice as fast. The operators are ONNX Runtime's, so such graphs
are marked ONNX-Runtime-only.

No kernel may saturate. On x86 CPUs without VNNI, ONNX Runtime multiplies uint8 activations by
int8 weights with an instruction (vpmaddubsw) that adds each pair of neighbouring products along
the reduction axis in a 16-bit lane, saturating at 32767. Which two weights a kernel pairs depends
on its layout, so every int8 weight tensor here keeps ANY two weights of an output column (or
channel) at most PAIR_LIMIT in magnitude together: 128 x 255, the largest uint8 activation, stays
below 32767 whichever kernel runs the graph. 4-bit MatMulNBits multiplies int8 activations
(|a| <= 127) by weights of magnitude <= 8, far from the limit.
"""
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_export import save_graph

# the most that two int8 weights of one output column may weigh together: 128 * 255 (the largest uint8
# activation) = 32640 <= 32767, the 16-bit lane that kernels without VNNI add a pair of products in
PAIR_LIMIT = 128
INT4_BLOCK = 32  # MatMulNBits block size along the input dimension
# MatMulNBits accuracy level 4: the activations of each row are quantized to int8 per block and the
# products run on int8 units; it is faster than the float level and treats every row on its own
INT4_ACCURACY = 4
# the constants the int8 rewrite adds: rows are symmetric int8 stored as uint8 (zero point 128) for
# ONNX Runtime's fast u8 x s8 kernels, in steps of 1/127 of the row's largest magnitude
ROW_CONSTANTS = {"rq_zero_point": np.array(128, np.uint8), "rq_step": np.array(1 / 127, np.float32),
                 "rq_floor": np.array(1e-30, np.float32),  # an all-zero row stays zero
                 "rq_axes": np.array([-1], np.int64)}


def quantization_facts(dtype: str, decoder_dtype: str) -> dict:
    """The manifest's `quantization`: the integer kernels of each quantized graph form, and which stage MatMuls
    take which precision. `pair_limit` tells a reader that no two int8 weights of a column weigh more together,
    so no kernel saturates."""
    facts: dict = {}
    if dtype in SCHEMES:
        facts["stages"] = SCHEMES[dtype].facts()
    if decoder_dtype == "int8":
        facts["decoder"] = {"op": "QLinearConv", "pair_limit": PAIR_LIMIT}
    return facts


def quantize_weights(path: Path, dtype: str, threshold: int) -> list:
    """Rewrite the stage graph at `path` by the scheme of `dtype`: each weight MatMul int8 (MatMulInteger)
    or int4 (MatMulNBits) as SCHEMES[dtype] gives its role."""
    scheme = SCHEMES[dtype]
    model = onnx.load(str(path))
    int8 = [node.name for node, name, _ in weight_matmuls(model) if scheme.precision(name) == "int8"]
    if scheme.uses_int4:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        with _quiet_quantizer():
            quantizer = MatMulNBitsQuantizer(model, block_size=scheme.int4_block, is_symmetric=True,
                                             accuracy_level=INT4_ACCURACY, nodes_to_exclude=int8)
            quantizer.process()
        model = quantizer.model.model
    quantize_rows_int8(model)  # every weight MatMul still in float32
    return save_graph(model, path, threshold)


# what each weight MatMul of a stage graph (named after its module) is part of
ROLES = {"wqkv": "attention", "wo": "attention", "w1": "feed_forward", "w3": "feed_forward",
         "w2": "feed_forward", "output": "head"}
# torch.onnx names a weight MatMul after its module: "/feed_forward/w1_2/MatMul", "/wqkv/MatMul", "/output.3/MatMul"
_MODULE = re.compile(r"/(wqkv|wo|w1|w2|w3|output)(?:[._]\d+)?/MatMul$")


def weight_matmuls(model: onnx.ModelProto) -> list:
    """[(node, matmul name, block ordinal or None for the head)] of every MatMul by a float32 weight of a stage
    graph, in graph order: the block ordinal counts the stage's blocks from 0."""
    weights = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2}
    found, block = [], -1
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            continue
        match = _MODULE.search(node.name)
        if match is None:
            raise ValueError(f"stage graph MatMul {node.name!r} is of no known module")
        name = match.group(1)
        if name == "wqkv":  # each block begins with its attention
            block += 1
        found.append((node, name, None if name == "output" else block))
    return found


@dataclass(frozen=True)
class Scheme:
    """The precision of each role of stage MatMul ("int8": MatMulInteger, "int4": MatMulNBits)."""
    attention: str  # wqkv and wo
    feed_forward: str  # w1, w3, w2
    head: str  # the stage's prediction head
    int4_block: int = INT4_BLOCK

    def precision(self, name: str) -> str:
        return getattr(self, ROLES[name])

    def facts(self) -> dict:
        """The stage form's `quantization` entry: the kernel of each precision it uses (the int4 one first, as
        an int4 folder has always named it) and `precision`, the precision of every block's attention and
        feed-forward MatMuls and of each stage's head."""
        used = [p for p in ("int4", "int8") if p in (self.attention, self.feed_forward, self.head)]
        kernels = {"int4": {"op": "MatMulNBits", "bits": 4, "block_size": self.int4_block,
                            "accuracy_level": INT4_ACCURACY},
                   "int8": {"op": "MatMulInteger", "pair_limit": PAIR_LIMIT}}
        facts = dict(kernels[used[0]])
        if len(used) == 2:
            facts["int8_op"] = "MatMulInteger"
            facts["pair_limit"] = PAIR_LIMIT
        facts["precision"] = {"attention": self.attention, "feed_forward": self.feed_forward, "head": self.head}
        return facts

    @property
    def uses_int4(self) -> bool:
        return "int4" in (self.attention, self.feed_forward, self.head)


SCHEMES = {"int8": Scheme("int8", "int8", "int8"), "int4": Scheme("int4", "int4", "int4"),
           # int4 where it costs the shipped word model's OCR least (docs/architecture.md, "Mixed precision"): the
           # feed-forward weights, three quarters of a block's, in blocks of 16; attention and heads int8
           "int4-int8": Scheme(attention="int8", feed_forward="int4", head="int8", int4_block=16)}
QUANTIZED = tuple(SCHEMES)


def quantize_decoder(path: Path, codes: np.ndarray, threshold: int, batch: int = 1) -> list:
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

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, _quiet_quantizer():
        out = Path(tmp) / path.name
        # reduce_range: weights in -64..64, so any two of a channel stay within PAIR_LIMIT
        quantize_static(path, out, Codes(), quant_format=QuantFormat.QOperator, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"])
        model = onnx.load(str(out))
    return save_graph(model, path, threshold)


def quantize_rows_int8(model: onnx.ModelProto) -> None:
    """Every MatMul of an activation by a float32 weight [K, N] becomes MatMulInteger: the weight int8
    per output column, the activation int8 per row (scale max|row| / 127), then back to float32 by the
    two scales (ONNX Runtime fuses that into MatMulIntegerToFloat). MatMuls that share an activation
    share its quantization."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    rows, columns, nodes = {}, {}, []
    for node in graph.node:
        w = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if w is None or w.data_type != TensorProto.FLOAT or len(w.dims) != 2:
            nodes.append(node)
            continue
        if node.input[0] not in rows:
            rows[node.input[0]] = _quantize_rows(node.input[0], nodes, opset, len(rows))
        if w.name not in columns:
            columns[w.name] = _quantize_columns(w)
        nodes += _integer_matmul(node, *rows[node.input[0]], columns[w.name])
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [t for t in graph.initializer if t.name not in columns]
    # the row constants, where an int8 product uses them (from opset 18 on, ReduceMax reads its axes)
    constants = [numpy_helper.from_array(v, k) for k, v in ROW_CONSTANTS.items()
                 if columns and (k != "rq_axes" or opset >= 18)]
    del graph.initializer[:]
    graph.initializer.extend(kept + constants + [t for pair in columns.values() for t in pair])


def _quantize_rows(x: str, nodes: list, opset: int, i: int) -> tuple:
    """(uint8 rows, float row maxima [.., 1]) of activation `x`: round(127 x / max|row|) + 128, the
    rounding and offset in one QuantizeLinear. The 1/127 of the row scale lives in the column scales."""
    n = f"rq{i}_"
    # from opset 18 on, ReduceMax takes its axes as an input instead of an attribute
    row_max = (helper.make_node("ReduceMax", [n + "abs", "rq_axes"], [n + "max"], keepdims=1) if opset >= 18
               else helper.make_node("ReduceMax", [n + "abs"], [n + "max"], axes=[-1], keepdims=1))
    nodes += [helper.make_node("Abs", [x], [n + "abs"]), row_max,
              helper.make_node("Max", [n + "max", "rq_floor"], [n + "max_pos"]),
              helper.make_node("Div", [x, n + "max_pos"], [n + "unit"]),
              helper.make_node("QuantizeLinear", [n + "unit", "rq_step", "rq_zero_point"], [n + "q"])]
    return n + "q", n + "max_pos"


def _quantize_columns(w) -> tuple:
    """(int8 weight, float32 column scales) initializers for float weight initializer `w` [K, N]: each column's
    two largest magnitudes map to 127 together, so after rounding (at most 0.5 each) any two weights of a
    column weigh at most PAIR_LIMIT."""
    values = numpy_helper.to_array(w).astype(np.float64)
    top_two = -np.partition(-np.abs(values), min(1, len(values) - 1), axis=0)[:2].sum(axis=0)
    scale = np.maximum(top_two, 1e-30) / (PAIR_LIMIT - 1)
    q = np.clip(np.round(values / scale), -127, 127).astype(np.int8)
    # times the rows' 1/127 step, so that the product needs only the rows' maxima
    return (numpy_helper.from_array(q, w.name + "_int8"),
            numpy_helper.from_array((scale / 127).astype(np.float32), w.name + "_scale"))


def _integer_matmul(node, q: str, row_scale: str, weight: tuple) -> list:
    w, col_scale = (t.name for t in weight)
    n, (y,) = node.name or node.output[0], node.output
    return [helper.make_node("MatMulInteger", [q, w, "rq_zero_point"], [n + "_int32"]),
            helper.make_node("Cast", [n + "_int32"], [n + "_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [row_scale, col_scale], [n + "_scales"]),
            helper.make_node("Mul", [n + "_float", n + "_scales"], [y])]


class _quiet_quantizer:
    """ONNX Runtime's quantizers log every tensor at INFO and advice as warnings, and importing the int4
    one runs logging.basicConfig(level=INFO): keep the root logger's level and handlers as they were."""

    def __enter__(self):
        root = logging.getLogger()
        self.level, self.handlers = root.level, list(root.handlers)
        import onnxruntime.quantization.matmul_nbits_quantizer  # noqa: F401  (its basicConfig runs here)
        root.setLevel(max(self.level, logging.ERROR))

    def __exit__(self, *exc):
        root = logging.getLogger()
        root.setLevel(self.level)
        root.handlers[:] = self.handlers
