"""tests/data/tiny-model, on which the runtime's tests run without torch, is what today's exporter writes for its
recipe (tests/export/tiny_model.py): the same manifest in meaning and the same outputs (logits, codes, pixels).
Bytes may differ: a graph rewritten to compute the same values is not a stale folder.

When this fails, write the folder again and commit it: .venv/bin/python tests/export/tiny_model.py
"""
import numpy as np
import pytest

from dnd_sdk import Generator
from dnd_sdk.model_folder.manifest import load_manifest
from export_helpers import teacher_forced_logits
from tiny_model import COMMITTED_MODEL, export_committed_recipe

REGENERATE = "tests/data/tiny-model is stale: write it again with `.venv/bin/python tests/export/tiny_model.py`"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """The committed recipe exported by this run's exporter."""
    return export_committed_recipe(tmp_path_factory.mktemp("fresh") / "model")


def meaning(model_dir) -> dict:
    """The manifest without what says nothing about the model: the files' hashes and sizes, and which tool
    versions wrote it."""
    d = load_manifest(model_dir).to_dict()
    d.pop("producer")
    for entry in d["files"].values():
        del entry["sha256"], entry["bytes"]
    return d


def test_the_manifest_means_the_same(fresh):
    assert meaning(COMMITTED_MODEL) == meaning(fresh), REGENERATE


def test_the_embedding_tables_are_the_same(fresh):
    committed, exported = (np.load(load_manifest(d).file_path("embeddings")) for d in (COMMITTED_MODEL, fresh))
    assert sorted(committed.files) == sorted(exported.files), REGENERATE
    for name in committed.files:
        assert np.array_equal(committed[name], exported[name]), (name, REGENERATE)


def test_the_stage_graphs_give_the_same_logits(fresh):
    m = load_manifest(COMMITTED_MODEL)
    rng = np.random.default_rng(0)
    h, w, depth = m.latent["h"], m.latent["w"], m.depth
    codes = rng.integers(0, m.model_config["vocab_size"], (3, h * w, depth))
    labels = np.array([0, 3, m.null_class])
    committed, exported = (teacher_forced_logits(d, codes, labels) for d in (COMMITTED_MODEL, fresh))
    # float32 graphs computing the same values in another order may differ in the last bits
    np.testing.assert_allclose(committed, exported, rtol=1e-5, atol=1e-5, err_msg=REGENERATE)


def test_the_folders_sample_the_same_codes_and_pixels(fresh):
    with Generator(COMMITTED_MODEL, threads=1) as committed, Generator(fresh, threads=1) as exported:
        for settings in (dict(cfg_scale=2.0, temperature=1.0), dict(cfg_scale=1.0, temperature=0.0)):
            codes = committed.sample_codes(num=8, seed=4, **settings)
            assert np.array_equal(codes, exported.sample_codes(num=8, seed=4, **settings)), (settings, REGENERATE)
            pixels = [np.asarray(image) for image in committed.decode(codes)]
            assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(pixels, exported.decode(codes))), REGENERATE
