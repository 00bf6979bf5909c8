"""One Generator shared by threads: concurrent calls are batched, and each returns what it returns alone."""
import gc
import signal
import threading
import weakref
from concurrent.futures import CancelledError as FutureCancelled

import numpy as np
import pytest
from forked import in_forked_child
from idle import scheduler_idle

from dnd_sdk import Generator
from dnd_sdk.errors import OverloadedError, RequestTimeoutError

# mixed settings: guided and not, greedy, filtered, per-head temperatures, several seeds and labels
CALLS = [
    dict(labels=["cat"], seed=0, cfg_scale=1.0),
    dict(labels=["dog", "fish"], seed=1, cfg_scale=2.0),
    dict(num=3, seed=2, cfg_scale=1.0, temperature=0.0),
    dict(labels=[3], seed=3, cfg_scale=3.0, top_k=5),
    dict(labels=["bird", 0], seed=4, cfg_scale=1.0, top_p=0.7),
    dict(labels="dog", start=7, seed=5, cfg_scale=1.5, head_temperatures=[0.5, 1.2]),
    dict(num=2, seed=6, cfg_scale=1.0, temperature=0.6, top_k=10, top_p=0.9),
    dict(labels=["fish"], image_indices=[4, 9], seed=7, cfg_scale=2.0, temperature=0.0),
]


@pytest.fixture()
def gen(tiny_model_dir):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1) as g:
        yield g


def _batch_sizes(gen) -> list:
    sizes = []
    gen.scheduler.listeners.append(lambda images, rows, seconds: sizes.append(images))
    return sizes


def test_threads_sharing_a_generator_get_their_serial_results(gen):
    serial = [gen.sample_codes(**kw) for kw in CALLS]
    sizes = _batch_sizes(gen)
    results, start = [None] * 12, threading.Barrier(12)

    def call(i):
        start.wait()
        results[i] = gen.sample_codes(**CALLS[i % len(CALLS)], timeout=60)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, got in enumerate(results):
        np.testing.assert_array_equal(got, serial[i % len(CALLS)])
    assert max(sizes) > 3  # the requests really shared backend calls


def test_images_and_decode_from_threads_equal_serial_ones(gen):
    serial = [np.asarray(im) for im in gen.sample(**CALLS[1])]
    codes = gen.sample_codes(**CALLS[2])
    decoded = [np.asarray(im) for im in gen.decode(codes)]
    out = {}
    threads = [threading.Thread(target=lambda: out.update(a=gen.sample(**CALLS[1]))),
               threading.Thread(target=lambda: out.update(b=gen.decode(codes))),
               threading.Thread(target=lambda: out.update(c=gen.sample_codes(**CALLS[0])))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [np.asarray(im).tolist() for im in out["a"]] == [s.tolist() for s in serial]
    assert [np.asarray(im).tolist() for im in out["b"]] == [d.tolist() for d in decoded]


def test_a_request_joining_mid_batch_gets_its_image_alone(gen):
    first, late = dict(num=2, seed=11, cfg_scale=2.0), dict(labels=["fish"], seed=12, cfg_scale=1.0, top_k=7)
    alone_first, alone_late = gen.sample_codes(**first), gen.sample_codes(**late)
    sizes, joined = _batch_sizes(gen), []

    def join_at_step_three(images, rows, seconds):
        if len(sizes) == 3:  # the first request sits at latent position 3 of 8 now
            joined.append(gen.submit(gen.request(**late), images=False))

    gen.scheduler.listeners.append(join_at_step_three)
    got_first = gen.sample_codes(**first, timeout=60)
    np.testing.assert_array_equal(got_first, alone_first)
    np.testing.assert_array_equal(joined[0].result(60), alone_late)
    # 3 steps alone, 5 together, 3 for the late one alone: it joined at the next position, not after the batch
    assert sizes == [2, 2, 2, 3, 3, 3, 3, 3, 1, 1, 1]


def test_timeout_and_cancel_drop_the_request_and_leave_others_alone(gen):
    expected = gen.sample_codes(**CALLS[1])
    with pytest.raises(RequestTimeoutError, match="within its timeout of 1e-05 s"):
        gen.sample(num=64, seed=0, timeout=1e-5)
    future = gen.submit(gen.request(num=64, seed=0), images=False)
    assert future.cancel()
    with pytest.raises(FutureCancelled):
        future.result()
    np.testing.assert_array_equal(gen.sample_codes(**CALLS[1], timeout=60), expected)
    assert gen.scheduler.queue_depth == 0


def test_a_full_queue_is_refused_at_once(tiny_model_dir):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1, max_batch=2, max_queue=1) as gen:
        long = gen.submit(gen.request(num=40, seed=0, cfg_scale=1.0), images=False)  # waits for rows 20 times
        with pytest.raises(OverloadedError, match=r"1 requests are waiting already \(max_queue 1\)"):
            gen.sample(labels=["cat"], seed=0)
        assert long.result(60).shape == (40, 2, 4, 2)
        assert len(gen.sample(labels=["cat"], seed=0, timeout=60)) == 1


def test_a_backend_failure_fails_its_requests_and_the_generator_goes_on(gen):
    expected = gen.sample_codes(**CALLS[1])
    stage1 = gen.backend.sessions["stage1"]
    gen.backend.sessions["stage1"] = gen.backend.sessions["decoder"]  # ONNX Runtime refuses the next stage-1 call
    try:
        with pytest.raises(ValueError, match="IOBinding must be used with the session that created it"):
            gen.sample_codes(**CALLS[1], timeout=60)  # raised to the caller, not a hang
    finally:
        gen.backend.sessions["stage1"] = stage1
    np.testing.assert_array_equal(gen.sample_codes(**CALLS[1], timeout=60), expected)


def test_a_done_callback_may_call_the_generator_again(gen):
    expected = gen.sample_codes(labels=["dog"], seed=3)
    got, called = [], threading.Event()

    def again(_):
        try:  # on the scheduler thread this call would wait for itself: until its timeout, then raise
            got.append((threading.current_thread().name, gen.sample_codes(labels=["dog"], seed=3, timeout=20)))
        finally:
            called.set()

    gen.submit(gen.request(num=2), images=False).add_done_callback(again)
    assert called.wait(30) and got[0][0] == "dnd-result"
    np.testing.assert_array_equal(got[0][1], expected)


def test_a_generator_dropped_without_close_is_collected_and_its_thread_ends(tiny_model_dir):
    g = Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1)
    g.sample_codes(num=2)
    thread, ref = g.scheduler._thread, weakref.ref(g)
    del g
    gc.collect()
    assert ref() is None
    thread.join(10)
    assert not thread.is_alive()


def test_an_interrupted_wait_drops_the_request(gen):
    # Ctrl-C while the caller waits: a real SIGINT, which wakes the wait the way a terminal's does.
    # Python's own handler, whatever the test runner inherited (a background shell ignores SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupt = threading.Timer(0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    interrupt.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            gen.sample_codes(num=100_000, seed=0)  # minutes of work
    finally:
        interrupt.join()
        signal.signal(signal.SIGINT, previous)
    assert scheduler_idle(gen)  # the scheduler drops the request at its next step


def test_a_child_made_by_fork_samples_what_the_parent_samples(tiny_model_dir):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=2) as gen:
        expected = gen.sample_codes(num=3, seed=4, cfg_scale=2.0)  # the scheduler thread runs in this process
        busy = threading.Thread(target=gen.sample_codes, kwargs=dict(num=200, seed=1))
        busy.start()  # and is mid-request when the second child is made
        for _ in range(2):
            got = in_forked_child(lambda: gen.sample_codes(num=3, seed=4, cfg_scale=2.0, timeout=30), timeout=20)
            assert isinstance(got, np.ndarray), got
            np.testing.assert_array_equal(got, expected)
        busy.join(60)
        np.testing.assert_array_equal(gen.sample_codes(num=3, seed=4, cfg_scale=2.0), expected)  # the parent goes on


def test_a_request_of_many_images_cannot_hold_every_row_while_another_waits(tiny_model_dir):
    # rows go to waiting requests in turn: one image asked for after a hundred gets a row when the first frees
    with Generator(tiny_model_dir, threads=1, max_batch=2) as gen:
        many = gen.submit(gen.request(num=100, seed=0, cfg_scale=1.0))
        one = gen.submit(gen.request(num=1, seed=1, cfg_scale=1.0))
        assert len(one.result(timeout=60)) == 1
        assert not many.done()
        many.cancel()


def test_a_guided_request_gets_its_two_rows_while_single_rows_keep_coming(tiny_model_dir):
    # with rows freed one at a time, each taken at once by a newer one-row request, a request needing two
    # rows would wait for ever: it holds the freed rows back until its two are there
    with Generator(tiny_model_dir, threads=1, max_batch=3) as gen:
        stream = [gen.submit(gen.request(num=1, seed=s, cfg_scale=1.0)) for s in range(3)]
        guided = gen.submit(gen.request(num=1, seed=9, cfg_scale=2.0))
        stream += [gen.submit(gen.request(num=1, seed=s, cfg_scale=1.0)) for s in range(3, 40)]
        assert len(guided.result(timeout=60)) == 1
        assert not all(f.done() for f in stream)  # it did not simply wait for all of them
        for f in stream:
            f.result(timeout=60)
