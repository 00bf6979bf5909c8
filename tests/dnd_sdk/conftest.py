"""Fixtures of the runtime tests. They run without torch: `tiny_model_dir` is the committed folder here
(tests/data/tiny-model, kept equal to what the exporter writes by tests/export/test_tiny_model_data.py).
A test that compares with PyTorch asks for `tiny_checkpoint` and `exported_tiny_model_dir`, which skip without
torch."""
import pytest

from dnd_sdk import Generator


@pytest.fixture(scope="session")
def tiny_model_dir(committed_tiny_model_dir):
    return committed_tiny_model_dir


@pytest.fixture(scope="module")
def gen(tiny_model_dir):
    """One Generator on the tiny model per test module, default backend, one thread."""
    with Generator(tiny_model_dir, threads=1) as g:
        yield g
