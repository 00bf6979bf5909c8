"""Backends judge folders themselves: BACKENDS is the one list of their names, and each answers `supports` for a
folder's graphs without importing the engine it wraps."""
import functools
import importlib.util
import subprocess
import sys

import pytest
from click.testing import CliRunner

from dnd_sdk import Generator
from dnd_sdk.backends import BACKEND_CHOICES, BACKENDS, onnxrt_spec, refusals, runnable
from dnd_sdk.cli.main import cli
from dnd_sdk.cpu import parse_cpuinfo
from dnd_sdk.errors import BackendUnavailableError
from dnd_sdk.model_folder.graphs import GraphFacts

ALL = ["tensorrt", "onnxruntime-cuda", "onnxruntime-cpu"]
ONNXRUNTIME = ["onnxruntime-cuda", "onnxruntime-cpu"]
BOUNDED_INT8 = {"op": "MatMulInteger", "pair_limit": 128}


def test_the_backend_list_is_the_one_list_of_names():
    names = [spec.name for spec in BACKENDS]
    assert names == ALL and BACKEND_CHOICES == ("auto", *names)
    for spec in BACKENDS:  # each runner exists where its spec says, found without importing it
        module, _, attr = spec.runner.partition(":")
        assert importlib.util.find_spec(module) is not None and attr, spec.runner


@pytest.mark.parametrize("graphs, runs_on", [
    (GraphFacts("fp32", "fp32"), ALL),
    (GraphFacts("fp16", "fp16"), ALL),
    (GraphFacts("bf16", "fp32"), ["tensorrt"]),
    (GraphFacts("int8", "int8", {"stages": BOUNDED_INT8, "decoder": {"op": "QLinearConv", "pair_limit": 128}}),
     ONNXRUNTIME),
    (GraphFacts("int4", "fp32", {"stages": {"op": "MatMulNBits", "bits": 4}}), ONNXRUNTIME),
    (GraphFacts("fp32", "int8", {"decoder": {"op": "QLinearConv", "pair_limit": 128}}), ONNXRUNTIME),
    (GraphFacts("fp32", ""), ALL),  # a folder from before decoder_dtype was recorded: a float decoder
    (GraphFacts("bf16", "int8"), []),  # dnd-export refuses to write it
])
def test_each_backend_judges_the_graphs(graphs, runs_on):
    assert runnable(graphs) == runs_on
    assert [name for name, refusal in refusals(graphs).items() if refusal] == [n for n in ALL if n not in runs_on]


def test_a_refusal_says_why_and_what_to_do():
    reasons = refusals(GraphFacts("int8", "int8", {"stages": BOUNDED_INT8}))
    assert reasons["tensorrt"] == (
        "TensorRT does not build ONNX Runtime's own integer operators, which make up this folder's int8 stage graphs "
        "(MatMulInteger) and int8 decoder; export with --dtype fp32, fp16 or bf16 and a float --decoder-dtype for "
        "TensorRT")
    assert "export with --dtype fp32 or fp16" in refusals(GraphFacts("bf16", "fp32"))["onnxruntime-cpu"]


@pytest.mark.parametrize("flags, refused", [("avx2 avx512f avx512_vnni", False), ("avx2 avx_vnni", False),
                                            ("avx2 avx512f", True)])
def test_int8_graphs_from_before_the_pair_limit_run_on_the_cpu_only_with_vnni(monkeypatch, flags, refused):
    monkeypatch.setattr(onnxrt_spec, "cpu_features",
                        functools.partial(parse_cpuinfo, f"model name\t: x\nflags\t\t: {flags}\n"))
    older = GraphFacts("int8", "fp32", {})  # quantized before `pair_limit` was recorded
    assert older.unbounded_int8_forms == ["stages"]
    assert runnable(older) == (["onnxruntime-cuda"] if refused else ONNXRUNTIME)
    assert runnable(GraphFacts("int8", "fp32", {"stages": BOUNDED_INT8})) == ONNXRUNTIME


def test_supports_imports_no_engine():
    script = ("import sys\nfor name in ('onnxruntime', 'tensorrt', 'cuda'):\n    sys.modules[name] = None\n"
              "from dnd_sdk.backends import runnable\nfrom dnd_sdk.model_folder.graphs import GraphFacts\n"
              "print(runnable(GraphFacts('fp32', 'fp32')))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == str(ALL), proc.stderr


def test_a_named_backend_that_refuses_the_folder_says_why(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(onnxrt_spec.OnnxruntimeSpec, "supports", lambda self, graphs: "it is a test")
    with pytest.raises(BackendUnavailableError, match="onnxruntime-cpu: it is a test"):
        Generator(tiny_model_dir, backend="onnxruntime-cpu")


def test_info_says_where_the_folder_runs(tiny_model_dir):
    result = CliRunner().invoke(cli, ["info", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert f"runs on:  {', '.join(ALL)} (stage graphs v2" in result.output and "not on:" not in result.output
