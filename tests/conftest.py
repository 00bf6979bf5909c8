"""Shared fixtures: a random-init tiny checkpoint and its fp32 export, built once per session, and the export of
the same recipe committed as tests/data/tiny-model (tests/export/tiny_model.py), which needs no torch.

    def test_x(tiny_checkpoint, tiny_model_dir): ...       # Path to checkpoint.pt / model folder
    def test_y(make_checkpoint, tmp_path):
        path = make_checkpoint(tmp_path / "c.pt", n_kv_head=4, grid_h=3)   # ModelArgs overrides

The fixtures that build or export a checkpoint skip their tests where torch is not installed; tests/dnd_sdk runs
on the committed folder instead (its conftest.py).
"""
import shutil

import pytest

from tiny_model import COMMITTED_MODEL, build_checkpoint


@pytest.fixture(scope="session")
def make_checkpoint():
    """Factory: make_checkpoint(path, seed=0, meta=None, **ModelArgs overrides) -> Path."""
    pytest.importorskip("torch")
    return lambda path, **kw: build_checkpoint(path, **kw)[0]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """checkpoint.pt of MODEL_CONFIGS["tiny"] (D=2, grid 2x4, V=64, GQA, null class), labels cat/dog/bird/fish."""
    pytest.importorskip("torch")
    from tiny_model import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "checkpoint.pt")


@pytest.fixture(scope="session")
def exported_tiny_model_dir(tiny_checkpoint, tmp_path_factory):
    """fp32 export of tiny_checkpoint by this run's exporter (the folder of docs/architecture.md)."""
    import torch

    from dnd_export import export_model

    torch.set_num_threads(1)
    return export_model(tiny_checkpoint, tmp_path_factory.mktemp("tiny_export") / "model", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_model_dir(exported_tiny_model_dir):
    """The tiny model folder: exported_tiny_model_dir here, the committed folder in tests/dnd_sdk."""
    return exported_tiny_model_dir


@pytest.fixture(scope="session")
def committed_tiny_model_dir(tmp_path_factory):
    """A copy of tests/data/tiny-model, made as an export makes its folder (modes from the umask), so that no test
    can change the committed files."""
    folder = tmp_path_factory.mktemp("committed") / "model"
    folder.mkdir()
    for path in COMMITTED_MODEL.iterdir():
        shutil.copyfile(path, folder / path.name)
    return folder
