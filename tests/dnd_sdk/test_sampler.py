"""The numpy sampler follows the sampling contract and matches the torch reference function for function
(those comparisons skip without torch)."""
from concurrent.futures import Future

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from dnd_sdk.errors import InvalidInputError
from dnd_sdk.sampler import SamplingParams, image_uniforms, logits_to_probs, sample
from dnd_sdk.scheduler import SampleWork, Scheduler
from dnd_sdk.step import Embeddings

try:  # the PyTorch reference, for the tests marked needs_torch
    import torch

    from dnd_training import sampling as reference
    from dnd_training.model import MODEL_CONFIGS, ModelArgs, Transformer
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="compares with the PyTorch reference, which needs torch")

logit_rows = arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(2, 40)),
                    elements=st.floats(-8, 8, width=32).map(lambda x: round(x, 1)))  # rounding makes ties
uniforms = st.floats(0, 1, exclude_max=True)


@settings(max_examples=80, deadline=None)
@given(logit_rows, uniforms)
def test_temperature_zero_is_argmax_first_index_on_ties(logits, u):
    got = sample(logits, np.full(len(logits), u), temperature=0)
    assert got.tolist() == [int(np.flatnonzero(row == row.max())[0]) for row in logits]


@settings(max_examples=80, deadline=None)
@given(logit_rows, st.integers(1, 40), st.floats(0.2, 3.0))
def test_top_k_keeps_exactly_the_k_largest_lower_index_first_on_ties(logits, k, temperature):
    probs = logits_to_probs(logits, temperature, k, 1.0)
    for row, p in zip(logits, probs):
        assert set(np.flatnonzero(p > 0).tolist()) == set(np.argsort(-row, kind="stable")[:k].tolist())
        assert p.sum() == pytest.approx(1.0)


@settings(max_examples=80, deadline=None)
@given(logit_rows, st.floats(0.01, 0.99), st.floats(0.3, 2.0), st.integers(0, 40))
def test_top_p_keeps_the_smallest_prefix_reaching_p(logits, top_p, temperature, k):
    probs = logits_to_probs(logits, temperature, k, top_p)
    for row, p in zip(logits, probs):
        x = row.astype(np.float64) / temperature
        order = np.argsort(-x, kind="stable")
        kept = order[:k] if 0 < k < len(x) else order
        mass = np.exp(x[kept] - x[kept].max())
        cum = np.cumsum(mass / mass.sum())
        n = int(np.argmax(cum >= top_p)) + 1 if (cum >= top_p).any() else len(kept)
        assert set(np.flatnonzero(p > 0).tolist()) == set(kept[:n].tolist())
        assert p.sum() == pytest.approx(1.0)


@needs_torch
@settings(max_examples=120, deadline=None)
@given(logit_rows, st.just(0.0) | st.floats(0.05, 3.0), st.integers(0, 40), st.floats(0.05, 1.0), st.data())
def test_numpy_sampler_equals_torch_reference(logits, temperature, k, top_p, data):
    u = np.array(data.draw(st.lists(uniforms, min_size=len(logits), max_size=len(logits))))
    got = sample(logits, u, temperature, k, top_p)
    want = reference.sample(torch.from_numpy(logits), torch.from_numpy(u), temperature, k, top_p).numpy()
    # the two may only differ where u sits on a cdf step to float64 rounding (a near-tie)
    for row, a, b, ui in zip(logits, got, want, u):
        if a != b:
            cdf = np.cumsum(logits_to_probs(row[None], temperature, k, top_p)[0])
            assert temperature > 0 and np.abs(cdf[min(a, b):max(a, b)] - ui).min() < 1e-12, (a, b, ui)
    if temperature > 0:
        np.testing.assert_allclose(logits_to_probs(logits, temperature, k, top_p),
                                   reference.logits_to_probs(torch.from_numpy(logits), temperature, k, top_p).numpy(),
                                   rtol=1e-12, atol=1e-15)


@settings(max_examples=80, deadline=None)
@given(logit_rows, st.floats(1.0, 3.0))
def test_unfiltered_probabilities_equal_a_filter_that_keeps_every_entry(logits, temperature):
    """top_k=0, top_p=1 skip the filter; top_p a hair below 1 runs it, and here it keeps every entry
    (the least probability, e^-16 / 40, is far above 1 - top_p), so the two must agree bit for bit."""
    filtered = logits_to_probs(logits, temperature, 0, np.nextafter(1.0, 0.0))
    assert (filtered > 0).all()
    np.testing.assert_array_equal(logits_to_probs(logits, temperature, 0, 1.0), filtered)


@settings(max_examples=120, deadline=None)
@given(logit_rows, st.floats(0.05, 3.0), st.integers(0, 40), st.floats(0.05, 1.0), st.data())
def test_a_draw_at_the_end_of_the_cdf_is_the_last_kept_token(logits, temperature, k, top_p, data):
    """`sample` clamps only a token past the end; it equals min(count(cdf <= u), last kept index) for every
    u, also where rows of one call draw at or past the cdf's last step (u = cdf[-1], u just below 1)."""
    probs = logits_to_probs(logits, temperature, k, top_p)
    cdf = np.cumsum(probs, axis=-1)
    below_one = np.nextafter(1.0, 0.0)
    u = np.array([data.draw(st.sampled_from([min(c, below_one), below_one]) | uniforms) for c in cdf[:, -1]])
    last_kept = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
    want = np.minimum((cdf <= u[:, None]).sum(-1), last_kept)
    np.testing.assert_array_equal(sample(logits, u, temperature, k, top_p), want)


def test_inverse_cdf_picks_first_index_whose_cumulative_probability_exceeds_u():
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]] * 4, dtype=np.float32))
    assert sample(logits, np.array([0.0, 0.1, 0.35, 0.9999]), temperature=1.0).tolist() == [0, 1, 2, 3]


def test_uniforms_depend_on_seed_and_index_only():
    a = image_uniforms(3, 5, 10)
    assert np.array_equal(a, image_uniforms(3, 5, 10)) and np.array_equal(a[:4], image_uniforms(3, 5, 4))
    assert not np.array_equal(a, image_uniforms(3, 6, 10)) and not np.array_equal(a, image_uniforms(4, 5, 10))


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(temperature=-0.5), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"), (dict(top_k=65), "top_k"), (dict(cfg_scale=-1.0), "cfg_scale"),
    (dict(head_temperatures=[1.0]), "one per depth"),
])
def test_bad_parameters_are_typed_errors(kwargs, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        SamplingParams(**kwargs).validate(vocab_size=64, depth=2, has_null_class=True)


def test_guidance_without_null_class_is_refused():
    with pytest.raises(InvalidInputError, match="null class"):
        SamplingParams(cfg_scale=2.0).validate(vocab_size=64, depth=2, has_null_class=False)


@needs_torch
@pytest.mark.parametrize("kw", [dict(cfg_scale=2.0, temperature=1.0, top_k=20, top_p=0.9),
                                dict(cfg_scale=1.0, temperature=0.0), dict(cfg_scale=3.0, temperature=0.7)])
def test_numpy_decode_loop_equals_torch_generate_on_the_same_stage_function(kw):
    """The scheduler's loop around the torch model's own stages gives the reference codes exactly."""
    torch.manual_seed(0)
    model = Transformer(ModelArgs(**MODEL_CONFIGS["tiny"])).eval()
    for head in model.output:
        torch.nn.init.normal_(head.weight, std=0.5)
    a, labels, seed = model.args, [0, 3, 1, 2, 1], 11
    want = reference.generate(model, labels, seed=seed, **kw).numpy()
    params = SamplingParams(**kw).validate(a.vocab_size, a.num_pred_heads, True)

    class TorchStages:
        """The model's stages as a backend; one request, so every row sits at the same position."""
        decodes_beside_steps = False

        def reset(self, rows):
            self.rows = rows
            self.caches = [model.empty_cache(rows, model.stage_layers(k)) for k in range(a.num_pred_heads)]

        @torch.no_grad()
        def stage_step(self, k, hidden, positions):
            assert len(hidden) == self.rows and (positions == positions[0]).all()
            logits, out, self.caches[k] = model.stage_forward(k, torch.from_numpy(hidden), self.caches[k])
            return logits[:, -1].numpy(), out.numpy()

        def close(self):
            self.caches = None

    tables = Embeddings(model.tok_embeddings.weight.detach().numpy(),
                        model.cls_embedding.embedding_table.weight.detach().numpy(), a.num_classes)
    rows = len(labels) * (2 if params.guided else 1)
    scheduler = Scheduler(TorchStages(), tables, (a.grid_h, a.grid_w, a.num_pred_heads), max_rows=rows, max_queue=1)
    work = SampleWork(Future(), np.array(labels), np.arange(len(labels)), seed, params, len(labels), False,
                      np.zeros((len(labels), a.seq_len, a.num_pred_heads), np.int64))
    got = scheduler.submit(work).result(60)
    scheduler.close()
    assert np.array_equal(got.reshape(want.shape), want)
