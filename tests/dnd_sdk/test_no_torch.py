"""`import dnd_sdk`, a whole sample() and `dnd --help` never import torch (or the other dnd packages), and the
runtime's tests are collected without it."""
import ast
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import dnd_sdk
from dnd_sdk.cli.main import main
try:
    main(["--help"])
except SystemExit as e:
    assert e.code == 0, e.code
images = dnd_sdk.Generator(sys.argv[1], threads=1).sample(labels=["cat", 2], seed=0, cfg_scale=2.0)
assert len(images) == 2 and images[0].size == (32, 16)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("dnd_training", "dnd_export", "dnd_engines", "dnd_eval",
                                                           "dnd_bench", "onnx"))
assert not heavy, heavy
print("TORCH-FREE OK")
"""


def test_sampling_runs_without_torch(tiny_model_dir):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH-FREE OK" in proc.stdout and "generate" in proc.stdout


# what only the train and export extras install: a runtime test imports them only where it skips without torch
TRAINING_SIDE = ("torch", "onnx", "dnd_training", "dnd_export", "dnd_engines")


def imported_at_module_level(tree: ast.Module) -> list:
    """The top-level modules a file's own import statements name (not those inside a function, try or if)."""
    names = [a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names]
    names += [node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module]
    return [name.split(".")[0] for name in names]


def skips_without_torch(tree: ast.Module) -> bool:
    """`... = pytest.importorskip("torch")` among the file's top-level statements."""
    return any(isinstance(node, (ast.Assign, ast.Expr)) and isinstance(node.value, ast.Call)
               and ast.unparse(node.value.func) == "pytest.importorskip"
               and [ast.unparse(a) for a in node.value.args[:1]] == ["'torch'"] for node in tree.body)


def test_the_runtime_tests_import_torch_only_where_they_skip_without_it():
    """`pytest tests/dnd_sdk` passes where torch is not installed (README, Tests): no file of it, nor the conftest.py
    above it, imports torch or a package that needs it when it is collected, unless it skips without torch."""
    here = Path(__file__).parent
    for path in [*sorted(here.glob("*.py")), here.parent / "conftest.py"]:
        tree = ast.parse(path.read_text(), str(path))
        heavy = sorted(set(imported_at_module_level(tree)) & set(TRAINING_SIDE))
        assert not heavy or skips_without_torch(tree), f"{path.name} imports {heavy} when it is collected"


def test_the_import_rule_sees_imports_and_skips():
    assert imported_at_module_level(ast.parse("import torch\nfrom dnd_training.x import y\ntry:\n    import onnx\n"
                                              "except ImportError:\n    pass")) == ["torch", "dnd_training"]
    assert skips_without_torch(ast.parse('torch = pytest.importorskip("torch")'))
    assert not skips_without_torch(ast.parse('ray = pytest.importorskip("ray")'))
