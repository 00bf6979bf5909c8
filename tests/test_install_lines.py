"""Every `pip install` of this package that the repository shows installs one ONNX Runtime and one TensorRT.

onnxruntime and onnxruntime-gpu install the same `onnxruntime` module (as do tensorrt and
tensorrt-cu12 the same `tensorrt`): one of a pair overwrites the other's files. The base install
carries neither, and no extra set that an install line uses may bring both.
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLLIDING = [{"onnxruntime", "onnxruntime-gpu"}, {"tensorrt", "tensorrt-cu12"}]
EXTRAS_IN_A_LINE = re.compile(r"(?:\.|dnd-sdk)\[([A-Za-z0-9_,-]+)\]")


def setup_requirements() -> tuple:
    """(install_requires, extras_require) as setup.py states them."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    args = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    return args["install_requires"], args["extras_require"]


def names(requirements) -> set:
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in requirements}


def install_lines() -> list:
    """(file, line, extras) of every line that pip-installs this package with extras."""
    files = [ROOT / "Makefile", ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("scripts/*"), ROOT / ".ci/run"]
    found = []
    for path in files:
        for line in path.read_text().splitlines():
            if "pip install" in line:
                found += [(path.name, line.strip(), m.group(1).split(",")) for m in EXTRAS_IN_A_LINE.finditer(line)]
    return found


def test_no_install_line_brings_two_builds_of_one_module():
    base, extras = setup_requirements()
    assert not names(base) & set().union(*COLLIDING), "the base install must leave ONNX Runtime and TensorRT to extras"
    lines = install_lines()
    assert {f for f, _, _ in lines} >= {"Makefile", "README.md"} and len(lines) >= 4, lines
    for file, line, chosen in lines + [("setup.py", f"extra {e}", [e]) for e in extras]:
        assert set(chosen) <= set(extras), f"{file}: {line}: unknown extra in {chosen}"
        installed = names(base).union(*(names(extras[e]) for e in chosen))
        for pair in COLLIDING:
            assert not pair <= installed, f"{file}: {line}: installs both {sorted(pair)}"


def test_the_test_install_brings_onnxruntime():
    # `make test` (and CI through it) runs ONNX Runtime on the CPU
    base, extras = setup_requirements()
    make_lines = [chosen for file, _, chosen in install_lines() if file == "Makefile"]
    assert make_lines and all("onnxruntime" in names(base).union(*(names(extras[e]) for e in c)) for c in make_lines)
