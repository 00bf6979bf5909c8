"""Fixtures of the runtime tests."""
import pytest

from dnd_sdk import Generator


@pytest.fixture(scope="module")
def gen(tiny_model_dir):
    """One Generator on the tiny model per test module, default backend, one thread."""
    with Generator(tiny_model_dir, threads=1) as g:
        yield g
