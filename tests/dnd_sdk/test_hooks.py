"""The scheduler's hooks: a request's progress (partial codes after each step) and the timings of steps and decodes."""
import threading

import numpy as np
import pytest

from dnd_sdk import Generator
from dnd_sdk.step import StepTimes


@pytest.fixture(scope="module")
def gen(tiny_model_dir):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1) as g:
        yield g


def test_progress_reports_each_image_after_every_step_on_the_scheduler_thread(gen):
    alone = gen.sample_codes(labels=["cat", "dog", "fish"], seed=3, cfg_scale=2.0)
    calls = []
    progress = lambda j, codes: calls.append((j, codes, threading.current_thread().name))  # noqa: E731
    # batch_size 2: the third image starts when one of the first two is done
    request = gen.request(labels=["cat", "dog", "fish"], seed=3, cfg_scale=2.0, batch_size=2)
    got = gen.submit(request, images=False, progress=progress).result(30)
    np.testing.assert_array_equal(got, alone)  # watching changes nothing
    assert {name for _, _, name in calls} == {"dnd-scheduler"}
    flat = got.reshape(3, 8, 2)
    for j in range(3):
        reports = [codes for i, codes, _ in calls if i == j]
        assert [r.shape for r in reports] == [(p, 2) for p in range(1, 9)]  # one per step, [positions done, D]
        assert all(r.dtype == np.int64 for r in reports)
        for r in reports:
            np.testing.assert_array_equal(r, flat[j, :len(r)])
    order = [j for j, _, _ in calls]
    assert order.index(2) > order.index(0)  # the third image ran after the first ones started


def test_progress_gets_copies_and_the_images_come_after_the_last_report(gen):
    seen = []
    future = gen.submit(gen.request(labels=["bird"], seed=5), progress=lambda j, codes: seen.append(codes))
    images = future.result(30)
    assert len(images) == 1 and len(seen) == 8
    seen[0][:] = -1  # a copy: changing it changes nothing the scheduler holds
    np.testing.assert_array_equal(seen[-1], gen.sample_codes(labels=["bird"], seed=5).reshape(8, 2))


def test_a_progress_that_raises_fails_its_request_only(gen):
    alone = gen.sample_codes(num=2, seed=1)

    def broken(j, codes):
        if len(codes) == 3:
            raise RuntimeError("the viewer went away")

    failing = gen.submit(gen.request(num=4, seed=2), progress=broken)
    other = gen.submit(gen.request(num=2, seed=1), images=False)
    with pytest.raises(RuntimeError, match="the viewer went away"):
        failing.result(30)
    np.testing.assert_array_equal(other.result(30), alone)
    assert gen.scheduler.images_in_flight == 0 and gen.scheduler.queue_depth == 0


def test_timings_add_up_the_parts_of_steps_and_decodes_while_installed(gen):
    gen.sample(num=2, seed=0)
    assert gen.scheduler.times is None  # nothing is timed by default
    times = StepTimes()
    gen.scheduler.times = times
    try:
        gen.sample(num=2, seed=0, timeout=30)
    finally:
        gen.scheduler.times = None
    assert times.steps == 8  # one per latent position: both images run in the same steps
    assert times.stages > 0 and times.sampling > 0 and times.embedding > 0 and times.decoder > 0
    gen.sample(num=2, seed=0, timeout=30)
    assert times.steps == 8  # uninstalled: nothing more is added
