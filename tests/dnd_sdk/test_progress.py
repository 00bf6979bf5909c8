"""`Generator.submit(request, progress=f)`: f sees each image's codes grow, one position per step, to its final codes."""
import numpy as np


def test_progress_sees_every_position_of_every_image_and_copies_of_the_codes(gen):
    h, w, depth = gen.latent_shape
    calls = []
    request = gen.request(labels=["cat", "dog"], seed=4, cfg_scale=2.0)
    codes = gen.submit(request, images=False, progress=lambda j, c: calls.append((j, c))).result(60)
    assert (codes == gen.sample_codes(labels=["cat", "dog"], seed=4, cfg_scale=2.0)).all()  # it changes nothing
    for j in range(2):
        seen = [c for i, c in calls if i == j]
        assert [c.shape for c in seen] == [(n, depth) for n in range(1, h * w + 1)]
        assert all((c == seen[-1][:len(c)]).all() for c in seen)  # the codes as they were, each a copy of its own
        assert not any(np.shares_memory(a, b) for a, b in zip(seen, seen[1:]))
        assert (seen[-1] == codes[j].reshape(h * w, depth)).all()
