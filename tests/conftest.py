"""Shared fixtures: a random-init tiny checkpoint and its fp32 export, built once per session.

    def test_x(tiny_checkpoint, tiny_model_dir): ...       # Path to checkpoint.pt / model folder
    def test_y(make_checkpoint, tmp_path):
        path = make_checkpoint(tmp_path / "c.pt", n_kv_head=4, grid_h=3)   # ModelArgs overrides
"""
import pytest
import torch

TINY_LABELS = ["cat", "dog", "bird", "fish"]
TINY_SAMPLER_DEFAULTS = {"cfg_scale": 2.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


def build_checkpoint(path, seed: int = 0, meta=None, **overrides):
    """Save a random tiny Transformer + matching RQTokenizer; returns (path, model, tokenizer)."""
    from dnd_training.random_checkpoint import random_checkpoint

    return random_checkpoint(path, "tiny", seed, head_std=0.5, labels=TINY_LABELS,
                             meta=meta if meta is not None else {"note": "random init for tests"}, **overrides)


@pytest.fixture(scope="session")
def make_checkpoint():
    """Factory: make_checkpoint(path, seed=0, meta=None, **ModelArgs overrides) -> Path."""
    return lambda path, **kw: build_checkpoint(path, **kw)[0]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """checkpoint.pt of MODEL_CONFIGS["tiny"] (D=2, grid 2x4, V=64, GQA, null class), labels cat/dog/bird/fish."""
    path = tmp_path_factory.mktemp("tiny") / "checkpoint.pt"
    return build_checkpoint(path, meta={"sampler_defaults": dict(TINY_SAMPLER_DEFAULTS)})[0]


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_checkpoint, tmp_path_factory):
    """fp32 export of tiny_checkpoint (the folder of docs/architecture.md)."""
    from dnd_export import export_model

    torch.set_num_threads(1)
    return export_model(tiny_checkpoint, tmp_path_factory.mktemp("tiny_export") / "model", dtype="fp32")
