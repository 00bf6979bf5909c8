"""Decoding runs on a thread of its own: the steps of other requests go on while images are decoded, and
close(), cancellation and fork() still hold. The decoder is the real ONNX Runtime one, held at a gate."""
import gc
import threading
import time
import weakref
from concurrent.futures import CancelledError as FutureCancelled, Future

import numpy as np
import pytest
from forked import in_forked_child

from dnd_sdk import Generator
from dnd_sdk.backends.onnxrt import OnnxrtBackend
from dnd_sdk.decode_queue import DecodeWork
from dnd_sdk.errors import CancelledError


class GatedDecoder:
    """Wraps a backend's run(): a decoder call waits at the gate, then runs the real decoder. Records the
    interval of each decoder call, and `started` is set as the first one arrives."""

    def __init__(self, backend):
        self.run, self.started, self.gate, self.calls = backend.run, threading.Event(), threading.Event(), []
        backend.run = self

    def __call__(self, graph, feeds):
        if graph != "decoder":
            return self.run(graph, feeds)
        t0 = time.perf_counter()
        self.started.set()
        assert self.gate.wait(60), "the test never opened the gate"
        try:
            return self.run(graph, feeds)
        finally:
            self.calls.append((t0, time.perf_counter()))


def _steps(gen) -> list:
    """The end time of every step from now on."""
    ends = []
    gen.scheduler.listeners.append(lambda images, rows, seconds: ends.append(time.perf_counter()))
    return ends


@pytest.fixture()
def gen(tiny_model_dir):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1) as g:
        yield g


def test_steps_go_on_while_a_request_is_decoded(gen):
    alone = gen.sample_codes(labels=["dog"], num=3, seed=9)
    decoder, steps = GatedDecoder(gen.backend), _steps(gen)
    images = gen.submit(gen.request(labels=["cat"], num=2, seed=1))
    assert decoder.started.wait(30)  # its codes are drawn, and its decode is held at the gate
    steps_before = len(steps)
    codes = gen.submit(gen.request(labels=["dog"], num=3, seed=9), images=False)
    np.testing.assert_array_equal(codes.result(30), alone)  # answered while the decode still waits
    assert not images.done() and len(steps) - steps_before == 8  # one step per latent position
    decoder.gate.set()
    assert len(images.result(30)) == 2
    assert decoder.calls[0][1] > steps[-1]  # the decoder call spanned every step of the second request


def test_a_backend_that_cannot_decode_beside_steps_takes_turns(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(OnnxrtBackend, "decodes_beside_steps", False)
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1) as gen:
        decoder, steps = GatedDecoder(gen.backend), _steps(gen)
        images = gen.submit(gen.request(labels=["cat"], num=2, seed=1))
        assert decoder.started.wait(30)
        steps_before = len(steps)
        codes = gen.submit(gen.request(labels=["dog"], num=3, seed=9), images=False)
        time.sleep(0.5)  # time for several steps, had the decoder not held the backend
        assert len(steps) == steps_before and not codes.done()
        decoder.gate.set()
        assert len(images.result(30)) == 2 and codes.result(30).shape == (3, 2, 4, 2)
        start, end = decoder.calls[0]
        assert all(not start < t < end for t in steps)  # no step ended while the decoder ran


def test_close_waits_for_the_decode_under_way_and_cancels_the_waiting_ones(gen):
    codes = gen.sample_codes(num=2, seed=0)
    decoder = GatedDecoder(gen.backend)
    running = _decode(gen, codes)
    assert decoder.started.wait(30)
    waiting = _decode(gen, codes)
    closing = threading.Thread(target=gen.close)
    closing.start()
    time.sleep(0.2)
    assert closing.is_alive() and gen.backend.sessions  # the backend stays open under the decoder call
    decoder.gate.set()
    closing.join(30)
    assert not closing.is_alive() and gen.backend.sessions == {}
    assert len(running.result(30)) == 2  # its only decoder call had started: it finishes
    with pytest.raises(CancelledError, match="closed before this request finished"):
        waiting.result(30)


def test_a_cancelled_decode_stops_at_its_next_decoder_call(gen):
    codes = gen.sample_codes(num=3, seed=0)
    decoder = GatedDecoder(gen.backend)
    future = _decode(gen, codes, batch_size=1)  # three decoder calls
    assert decoder.started.wait(30)
    assert future.cancel()
    decoder.gate.set()
    with pytest.raises(FutureCancelled):
        future.result(30)
    for _ in range(100):
        if gen.scheduler.queue_depth == 0 and decoder.calls:
            break
        time.sleep(0.01)
    time.sleep(0.2)
    assert len(decoder.calls) == 1  # the two calls after the cancel never ran
    assert len(gen.sample(labels=["cat"], seed=0, timeout=30)) == 1  # the Generator goes on


def test_a_generator_dropped_after_decoding_is_collected_and_both_threads_end(tiny_model_dir):
    g = Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1)
    g.sample(num=2)
    threads = [g.scheduler._thread, g.scheduler._decodes._thread]
    ref = weakref.ref(g)
    del g
    gc.collect()
    assert ref() is None
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()


def test_a_child_made_by_fork_decodes_what_the_parent_decodes(tiny_model_dir):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1) as gen:
        expected = [np.asarray(im) for im in gen.sample(num=2, seed=4)]  # both threads run in this process
        got = in_forked_child(lambda: [np.asarray(im) for im in gen.sample(num=2, seed=4, timeout=30)])
        assert isinstance(got, list), got
        assert [g.tolist() for g in got] == [e.tolist() for e in expected]


def _decode(gen, codes, batch_size: int = 16):
    """A decode submitted without waiting for it (Generator.decode waits)."""
    return gen.scheduler.submit(DecodeWork(Future(), gen.check_codes(codes), batch_size))
