"""TensorRT lint: what TensorRT 10's ONNX parser documents it cannot take, found on CPU.

    findings = lint_folder("out/model")    # every graph dnd-build turns into an engine
    findings = lint_graph("stage0.onnx")   # [] when the graph keeps to the rules below
    print(findings[0])                     # stage0: Gather node '/Gather_2': index -1 on axis 1 ...
    python -m dnd_export.trt_lint out/model   # the same from a shell: one line per finding, exit 1 on any

The TensorRT path runs on no CPU test machine, and ONNX Runtime accepts every graph below,
so these rules are the only check a graph gets before it meets a GPU. Each rule cites its
source. Sources, for the `tensorrt>=10,<12` the `gpu` extra pins:
  [ops]    onnx-tensorrt docs/operators.md of TensorRT 10.15 (supported operators and types;
           the header of the TensorRT 10.0 edition gives opsets 9 to 20).
  [gather] TensorRT IGatherLayer documentation (NvInfer.h, 10.x): a negative index on an axis
           whose length is not a build-time constant is undefined, and an out-of-bounds read
           returns zero; onnx-tensorrt's Gather importer passes the index through unchanged.
A finding is a bug of the exporter: change the graph, do not silence the rule.
"""
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from dnd_sdk.backends.tensorrt_spec import TensorrtSpec
from dnd_sdk.cli.flags import user_errors
from dnd_sdk.model_folder.manifest import load_manifest

# [ops] header: the opsets TensorRT 10.0, the oldest version the gpu extra admits, parses
OPSETS = range(9, 21)
FLOATS = {"FLOAT", "FLOAT16", "BFLOAT16"}
INTS = {"INT32", "INT64"}
ANY = FLOATS | INTS | {"BOOL"}

# [ops] "Supported Types" of every op type the exporter writes today. An op missing here is a
# finding too: look it up in operators.md before adding it (ops marked N there need a plugin).
SUPPORTED_TYPES = {
    **dict.fromkeys(["Add", "Sub", "Mul", "Div", "Max", "Min", "Mod", "Pow", "Range", "Equal", "Less",
                     "LessOrEqual", "Greater", "GreaterOrEqual"], FLOATS | INTS),
    **dict.fromkeys(["Cos", "Sin", "Sqrt", "Reciprocal", "Sigmoid", "Softmax", "MatMul", "Conv", "Floor",
                     "InstanceNormalization", "ReduceMean", "ReduceSum", "Resize", "Clip"], FLOATS),  # Clip: no integer types
    **dict.fromkeys(["Concat", "Constant", "ConstantOfShape", "Gather", "Identity", "Reshape", "Shape", "Slice",
                     "Split", "Squeeze", "Unsqueeze", "Tile", "Transpose", "Where"], ANY),
    **dict.fromkeys(["And", "Or", "Xor", "Not"], {"BOOL"}),
    "Cast": ANY | {"UINT8"},
}
# which tensor carries the type the matrix speaks of, where it is not the first input
TYPED_TENSOR = {"Where": ("input", 1), "Constant": ("output", 0), "ConstantOfShape": ("output", 0),
                "Cast": ("output", 0)}
# [ops] Restrictions column, for the ops above that have one: these inputs must be build-time
# constants (Squeeze/Unsqueeze axes became dynamic only in 10.7, per the onnx-tensorrt changelog)
CONSTANT_INPUTS = {"ReduceMean": 1, "ReduceSum": 1, "Squeeze": 1, "Unsqueeze": 1}
# [ops] Resize: the modes TensorRT implements; antialiasing is not supported
RESIZE_ATTRIBUTES = {
    "mode": {"nearest", "linear"},
    "coordinate_transformation_mode": {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                                       "align_corners"},
    "nearest_mode": {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"},
    "keep_aspect_ratio_policy": {"stretch"},
    "antialias": {0},
}


@dataclass(frozen=True)
class Finding:
    graph: str
    node: str
    op: str
    message: str

    def __str__(self) -> str:
        return f"{self.graph}: {self.op} node {self.node!r}: {self.message}"


def lint_folder(model_dir) -> list:
    """Lint every graph of an exported folder that is meant for TensorRT (dnd-build builds each); a folder
    that TensorRT refuses (int8/int4: ONNX Runtime's quantized operators in the stage graphs or the decoder) is
    ONNX-Runtime-only, refused by dnd-build, and exempt."""
    manifest = load_manifest(model_dir, verify=False)
    graphs = [*manifest.stage_names, "decoder"] if TensorrtSpec().supports(manifest.graphs) is None else []
    return [f for graph in graphs for f in lint_graph(manifest.graph_path(graph))]


def lint_graph(path) -> list:
    """Findings for one .onnx file (its external weights are not read: no rule needs them)."""
    path = Path(path)
    return lint_model(onnx.load(str(path), load_external_data=False), path.stem)


def lint_model(model: onnx.ModelProto, name: str) -> list:
    """Findings for a loaded model; `name` (the graph's) starts each finding's text."""
    graph = _Graph(model)
    findings = []
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version not in OPSETS:
            findings.append(Finding(name, "(model)", "opset", f"opset {opset.version} is outside the opsets "
                                    f"{OPSETS.start}..{OPSETS.stop - 1} that TensorRT 10.0 parses"))
    for node in model.graph.node:
        findings += [Finding(name, node.name, node.op_type, m) for m in _node_problems(graph, node)]
    boundary = {v.name for v in (*model.graph.input, *model.graph.output)}
    for tensor in [*graph.producer, *(t.name for t in model.graph.initializer)]:
        # [ops] "UINT8 is only supported as network input or output tensor types"
        if graph.dtype(tensor) == "UINT8" and tensor not in boundary:
            producer = graph.producer.get(tensor)
            findings.append(Finding(name, producer.name if producer else tensor, producer.op_type if producer
                                    else "initializer", f"{tensor!r} is uint8 inside the network; TensorRT takes "
                                    "uint8 only as a network input or output"))
    return findings


def _node_problems(graph: "_Graph", node: onnx.NodeProto) -> list:
    if node.domain not in ("", "ai.onnx"):
        return [f"custom op of domain {node.domain!r}: TensorRT runs it only through a plugin"]
    if node.op_type not in SUPPORTED_TYPES:
        return [f"{node.op_type} is not in the lint's table of TensorRT 10 operators; look it up in onnx-tensorrt's "
                "operators.md (an op marked N there needs a plugin) and add it, or export something else"]
    problems = []
    kind, index = TYPED_TENSOR.get(node.op_type, ("input", 0))
    dtype = graph.dtype((node.input if kind == "input" else node.output)[index])
    if dtype is not None and dtype not in SUPPORTED_TYPES[node.op_type]:
        problems.append(f"{node.op_type} on {dtype}: TensorRT 10 supports it for {sorted(SUPPORTED_TYPES[node.op_type])}")
    source = graph.dtype(node.input[0]) if node.op_type == "Cast" else None  # a Cast's input counts too
    if source is not None and source not in SUPPORTED_TYPES["Cast"]:
        problems.append(f"Cast from {source}: TensorRT 10 supports it for {sorted(SUPPORTED_TYPES['Cast'])}")
    constant_input = CONSTANT_INPUTS.get(node.op_type)
    if constant_input is not None and len(node.input) > constant_input and node.input[constant_input] \
            and graph.constant(node.input[constant_input]) is None:
        problems.append(f"input {constant_input} ({node.input[constant_input]!r}) must be a build-time constant")
    if node.op_type == "Resize":
        for attr in node.attribute:
            value = onnx.helper.get_attribute_value(attr)
            value = value.decode() if isinstance(value, bytes) else value
            if attr.name in RESIZE_ATTRIBUTES and value not in RESIZE_ATTRIBUTES[attr.name]:
                problems.append(f"Resize {attr.name}={value!r} is not supported")
    if node.op_type == "Gather":
        problems += _negative_gather(graph, node)
    return problems


def _negative_gather(graph: "_Graph", node: onnx.NodeProto) -> list:
    """[gather] a negative constant index is defined only on an axis of build-time constant length."""
    indices = graph.constant(node.input[1])
    if indices is None or not (indices < 0).any():
        return []
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    dims = graph.dims(node.input[0])
    if dims is not None:
        axis %= len(dims)
        if isinstance(dims[axis], int):  # a shape vector, or any axis of fixed length
            return []
    length = "of unknown length" if dims is None else f"of dynamic length {dims[axis]!r}"
    return [f"index {indices.min()} on axis {axis} {length}: undefined in TensorRT (it reads zeros); "
            "slice with a negative start instead (x[:, -1:]), which TensorRT resolves against the runtime shape"]


class _Graph:
    """Types, static dims, constants and producers of a graph's tensors (after ONNX shape inference)."""

    def __init__(self, model: onnx.ModelProto):
        try:
            g = shape_inference.infer_shapes(model, data_prop=True).graph
        except onnx.shape_inference.InferenceError:  # e.g. a custom op: lint on the types the file declares
            g = model.graph
        self._types = {v.name: v.type.tensor_type for v in (*g.value_info, *g.input, *g.output)}
        self._initializers = {t.name: t for t in g.initializer}
        self.producer = {out: node for node in g.node for out in node.output if out}
        self._constants = {n.output[0]: n for n in g.node if n.op_type == "Constant"}

    def dtype(self, name: str):
        """The element type's name ("FLOAT", "INT64"...); None where inference left it unknown."""
        if name in self._initializers:
            return onnx.TensorProto.DataType.Name(self._initializers[name].data_type)
        t = self._types.get(name)
        return onnx.TensorProto.DataType.Name(t.elem_type) if t is not None and t.elem_type else None

    def dims(self, name: str):
        """Per dim an int (static) or a name/None (dynamic); None when even the rank is unknown."""
        t = self._types.get(name)
        if t is None or not t.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]

    def constant(self, name: str):
        """The value of an initializer or Constant output as a numpy array; None when computed at run time."""
        if name in self._initializers:
            t = self._initializers[name]
            return None if t.data_location == onnx.TensorProto.EXTERNAL else numpy_helper.to_array(t)
        node = self._constants.get(name)
        if node is None or node.attribute[0].name != "value":
            return None
        return np.asarray(numpy_helper.to_array(node.attribute[0].t))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@user_errors
def main(folders):
    """Lint the graphs of exported model FOLDERS against TensorRT's ONNX parser; exit 1 on any finding."""
    findings = [f for folder in folders for f in lint_folder(folder)]
    for f in findings:
        click.echo(f)
    click.echo(f"TensorRT lint: {len(findings)} finding(s)" if findings else "TensorRT lint: no findings")
    if findings:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
