"""The TensorRT lint: every graph form the exporter writes passes it, and each rule fires on what it forbids."""
import onnx
import pytest
import torch
from onnx import TensorProto as T, helper

from dnd_export import ExportCheckError, export_model
from dnd_export.stages import StageWrapper
from dnd_export.trt_lint import lint_folder, lint_graph, lint_model
from dnd_sdk.backends import runnable
from dnd_sdk.model_folder.manifest import load_manifest


@pytest.mark.parametrize("dtype, opset", [("fp32", 17), ("fp16", 17), ("bf16", 17), ("fp32", 14), ("fp16", 20)])
def test_every_exported_graph_form_passes(tiny_checkpoint, tiny_model_dir, tmp_path, dtype, opset):
    # the folder's graphs are all built by dnd-build (none is marked ONNX-Runtime-only), so all are linted
    folder = tiny_model_dir if (dtype, opset) == ("fp32", 17) else \
        export_model(tiny_checkpoint, tmp_path / "m", dtype=dtype, opset=opset)
    assert lint_folder(folder) == []
    graphs = [load_manifest(folder).graph_path(g) for g in ("stage0", "stage1", "decoder")]
    ops = {n.op_type for g in graphs for n in onnx.load(str(g)).graph.node}
    assert {"Gather", "Where", "Resize", "Cast", "Floor"} <= ops  # the rules had something to look at


def test_ort_only_stage_graphs_are_exempt(tiny_checkpoint, tmp_path):
    folder = export_model(tiny_checkpoint, tmp_path / "m", dtype="int8")
    assert "tensorrt" not in runnable(load_manifest(folder).graphs)
    for graph in ("stage0", "decoder"):  # quantized ops TensorRT's parser does not take
        assert lint_graph(load_manifest(folder).graph_path(graph))
    assert lint_folder(folder) == []


def _last_position_module(index):
    class Last(torch.nn.Module):
        def forward(self, x):
            return index(x) * 2.0
    return Last()


def _export(module, path, dynamic=True):
    axes = {"x": {0: "batch_size", 1: "sequence_length"}} if dynamic else {}
    torch.onnx.export(module, (torch.randn(2, 3, 4),), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes=axes)
    return path


def test_negative_gather_on_a_dynamic_axis_is_found_and_the_slice_form_passes(tmp_path):
    old = lint_graph(_export(_last_position_module(lambda x: x[:, -1]), tmp_path / "old.onnx"))
    assert len(old) == 1 and old[0].op == "Gather" and old[0].node.startswith("/Gather")
    assert "index -1 on axis 1 of dynamic length 'sequence_length'" in str(old[0])
    assert str(old[0]).startswith(f"old: Gather node {old[0].node!r}: ")
    new = tmp_path / "new.onnx"
    assert lint_graph(_export(_last_position_module(lambda x: x[:, -1:][:, 0]), new)) == []
    # the same negative index on an axis of fixed length (here every axis is static) is defined
    assert lint_graph(_export(_last_position_module(lambda x: x[:, -1]), tmp_path / "s.onnx", dynamic=False)) == []
    # a Gather on a shape vector is too, as in head_dim = q.shape[-1] of the attention
    assert lint_graph(_export(_last_position_module(lambda x: x * x.shape[-1]), tmp_path / "v.onnx")) == []


def test_check_fails_on_a_negative_gather_in_a_stage_graph(tiny_checkpoint, tmp_path, monkeypatch):
    forward = StageWrapper.forward

    def last_row_too(self, *args):  # logits[-1]: Gather(-1) on the dynamic rows axis
        logits, *rest = forward(self, *args)
        return (logits + 0 * logits[-1], *rest)
    monkeypatch.setattr(StageWrapper, "forward", last_row_too)
    with pytest.raises(ExportCheckError, match=r"2 TensorRT lint finding\(s\).*stage0: Gather node '/Gather[_\d]*': "
                                               r"index -1 on axis 0.*stage1: Gather"):
        export_model(tiny_checkpoint, tmp_path / "m", check=True)
    assert not (tmp_path / "m").exists()


def _graph(nodes, inputs, outputs, opset=17, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    domains = {n.domain for n in nodes} - {""}
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   *(helper.make_opsetid(d, 1) for d in domains)])


def _value(name, dtype, shape=("n",)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _int64(name, values):
    return helper.make_tensor(name, T.INT64, [len(values)], values)


RULE_CASES = {
    "clip on int64": (_graph([helper.make_node("Clip", ["x", "lo"], ["y"], name="clip")], [_value("x", T.INT64)],
                             [_value("y", T.INT64)], initializers=[helper.make_tensor("lo", T.INT64, [], [0])]),
                      "clip", "Clip on INT64: TensorRT 10 supports it for ['BFLOAT16', 'FLOAT', 'FLOAT16']"),
    "uint8 inside": (_graph([helper.make_node("Cast", ["x"], ["u"], to=T.UINT8, name="to_u8"),
                             helper.make_node("Cast", ["u"], ["y"], to=T.FLOAT, name="back")],
                            [_value("x", T.FLOAT)], [_value("y", T.FLOAT)]),
                     "to_u8", "'u' is uint8 inside the network"),
    "plugin op": (_graph([helper.make_node("FancyAttention", ["x"], ["y"], domain="com.example", name="fancy")],
                         [_value("x", T.FLOAT)], [_value("y", T.FLOAT)]),
                  "fancy", "custom op of domain 'com.example': TensorRT runs it only through a plugin"),
    "op outside the table": (_graph([helper.make_node("NonZero", ["x"], ["y"], name="nz")], [_value("x", T.FLOAT)],
                                    [_value("y", T.INT64, (1, "k"))]),
                             "nz", "NonZero is not in the lint's table"),
    "resize mode": (_graph([helper.make_node("Resize", ["x", "", "s"], ["y"], mode="cubic", name="up")],
                           [_value("x", T.FLOAT, (1, 1, 2, 2))], [_value("y", T.FLOAT, (1, 1, 4, 4))],
                           initializers=[helper.make_tensor("s", T.FLOAT, [4], [1, 1, 2, 2])]),
                    "up", "Resize mode='cubic' is not supported"),
    "dynamic unsqueeze axes": (_graph([helper.make_node("Unsqueeze", ["x", "a"], ["y"], name="uns")],
                                      [_value("x", T.FLOAT), _value("a", T.INT64, (1,))],
                                      [_value("y", T.FLOAT, ("n", 1))]),
                               "uns", "input 1 ('a') must be a build-time constant"),
    "opset": (_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], [_value("x", T.FLOAT)],
                     [_value("y", T.FLOAT)], opset=21), "(model)", "opset 21 is outside the opsets 9..20"),
}


@pytest.mark.parametrize("case", list(RULE_CASES))
def test_each_rule_names_the_node(case):
    model, node, message = RULE_CASES[case]
    findings = [f for f in lint_model(model, "g") if message in f.message]
    assert [f.node for f in findings] == [node], lint_model(model, "g")


def test_what_the_rules_allow():
    # uint8 as a network output (the decoder's image), Mod/Range/Where on int64, a constant-index Gather >= 0
    model = _graph([helper.make_node("Range", ["zero", "n", "one"], ["r"], name="range"),
                    helper.make_node("Mod", ["r", "two"], ["m"], name="mod"),
                    helper.make_node("Less", ["m", "one"], ["even"], name="less"),
                    helper.make_node("Where", ["even", "r", "m"], ["w"], name="where"),
                    helper.make_node("Gather", ["w", "idx"], ["g"], name="gather"),
                    helper.make_node("Cast", ["g"], ["y"], to=T.UINT8, name="to_u8")],
                   [helper.make_tensor_value_info("n", T.INT64, [])], [_value("y", T.UINT8, (1,))],
                   initializers=[helper.make_tensor("zero", T.INT64, [], [0]), helper.make_tensor("one", T.INT64, [], [1]),
                                 helper.make_tensor("two", T.INT64, [], [2]), _int64("idx", [0])])
    onnx.checker.check_model(model, full_check=True)
    assert lint_model(model, "g") == []
