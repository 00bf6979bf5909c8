"""Stage graph v2: rows of one call sit at their own positions (what continuous batching needs)."""
import numpy as np
import pytest

from dnd_sdk import Generator
from dnd_sdk.errors import InvalidInputError
from export_helpers import run_calls


def test_rows_at_different_positions_give_the_logits_each_gives_alone(tiny_model_dir):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1) as gen:
        codes = np.random.default_rng(0).integers(0, gen.vocab_size, (3, 5, 2))
        # a sequence: the condition token, then the summed embeddings of each cell's codes
        a, b, junk = (np.concatenate([gen.cls_embedding[[label]], gen.tok_embeddings[c].sum(1)])
                      for label, c in zip((1, 3, 0), codes))
        alone_a = run_calls(gen.backend, [[(a[p], p)] for p in range(6)])[:, 0]
        alone_b = run_calls(gen.backend, [[(b[p], p)] for p in range(4)])[:, 0]
        # row 1 runs two positions of another sequence, then starts b over at position 0
        row1 = [(junk[0], 0), (junk[1], 1)] + [(b[p], p) for p in range(4)]
        together = run_calls(gen.backend, [[(a[c], c), row1[c]] for c in range(6)])
    np.testing.assert_allclose(together[:, 0], alone_a, atol=1e-5)
    np.testing.assert_allclose(together[2:, 1], alone_b, atol=1e-5)
    assert np.abs(together[2:, 1] - together[2:, 0]).max() > 0.1  # the two rows really differ


def test_positions_outside_the_cache_are_refused(tiny_model_dir):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1) as gen:
        gen.backend.reset(2)
        hidden = gen.cls_embedding[[0, 1]][:, None, :]
        with pytest.raises(InvalidInputError, match=r"positions must be 2 ints in \[0, 8\)"):
            gen.backend.stage_step(0, hidden, np.array([0, 8]))
        with pytest.raises(InvalidInputError, match="after reset"):
            gen.backend.stage_step(0, gen.cls_embedding[[0, 1, 0]][:, None, :])
