"""The torch reference sampler follows the sampling contract and the randomness rule."""
import inspect

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from dnd_sdk.sampler import SETTINGS
from dnd_training.model import MODEL_CONFIGS, ModelArgs, Transformer
from dnd_training.sampling import generate, logits_to_probs, sample

logit_rows = arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(2, 40)),
                    elements=st.floats(-8, 8, width=32).map(lambda x: round(x, 1)))  # rounding makes ties


@settings(max_examples=60, deadline=None)
@given(logit_rows)
def test_temperature_zero_is_argmax_first_index_on_ties(logits):
    got = sample(torch.from_numpy(logits), torch.rand(logits.shape[0]).double(), temperature=0)
    assert got.tolist() == [int(np.flatnonzero(row == row.max())[0]) for row in logits]


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.integers(1, 40))
def test_top_k_keeps_exactly_the_k_largest(logits, k):
    probs = logits_to_probs(torch.from_numpy(logits), 1.0, k, 1.0).numpy()
    for row, p in zip(logits, probs):
        expected = set(np.argsort(-row, kind="stable")[:k].tolist())
        assert set(np.flatnonzero(p > 0).tolist()) == expected
        assert p.sum() == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(logit_rows, st.floats(0.01, 0.99), st.floats(0.3, 2.0))
def test_top_p_keeps_the_smallest_prefix_reaching_p(logits, top_p, temperature):
    probs = logits_to_probs(torch.from_numpy(logits), temperature, 0, top_p).numpy()
    for row, p in zip(logits, probs):
        x = row.astype(np.float64) / temperature
        full = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
        order = np.argsort(-x, kind="stable")
        cum = np.cumsum(full[order])
        n = int(np.argmax(cum >= top_p)) + 1 if (cum >= top_p).any() else len(order)
        assert set(np.flatnonzero(p > 0).tolist()) == set(order[:n].tolist())


def test_inverse_cdf_picks_first_index_whose_cumulative_probability_exceeds_u():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 4))
    u = torch.tensor([0.0, 0.1, 0.35, 0.9999], dtype=torch.float64)
    assert sample(logits, u, temperature=1.0).tolist() == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(ModelArgs(**MODEL_CONFIGS["tiny"]))
    for head in m.output:
        torch.nn.init.normal_(head.weight, std=0.5)
    return m.eval()


def test_image_depends_on_seed_and_index_not_on_batch(model):
    kw = dict(seed=7, cfg_scale=2.0, temperature=1.0, top_k=20, top_p=0.9)
    batch = generate(model, [0, 1, 2, 3, 0, 1], **kw)
    for i in range(6):
        alone = generate(model, [batch.new_tensor([0, 1, 2, 3, 0, 1])[i]], image_indices=[i], **kw)
        assert torch.equal(alone[0], batch[i])
    assert not torch.equal(batch, generate(model, [0, 1, 2, 3, 0, 1], **{**kw, "seed": 8}))
    assert batch.shape == (6, 2, 4, 2) and batch.dtype == torch.long


def test_head_temperatures_override_per_depth(model):
    greedy = generate(model, [1, 2], seed=0, temperature=0)
    mixed = generate(model, [1, 2], seed=0, temperature=5.0, head_temperatures=[0, 0])
    assert torch.equal(greedy, mixed)


def test_the_reference_takes_every_setting_by_keyword():
    """A field added to SamplingParams fails here until the reference sampler takes it (and passes it on
    by keyword: a position would shift the values of the fields after it)."""
    keywords = {name for name, p in inspect.signature(generate).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert set(SETTINGS) <= keywords
