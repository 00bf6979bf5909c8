"""The lint settings follow the package list, and ruff passes (`make lint` runs mypy as well: too slow here)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def package_dir() -> dict:
    tree = ast.parse((ROOT / "setup.py").read_text())
    return next(ast.literal_eval(n.value) for n in ast.walk(tree)
                if isinstance(n, ast.keyword) and n.arg == "package_dir")


def test_ruff_and_mypy_know_every_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    assert sorted(tool["ruff"]["lint"]["isort"]["known-first-party"]) == sorted(package_dir())
    assert sorted(tool["mypy"]["packages"]) == sorted(package_dir())


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed (the dev extra brings it)")
    result = subprocess.run([str(ruff), "check", "--no-cache", "--quiet", str(ROOT)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
