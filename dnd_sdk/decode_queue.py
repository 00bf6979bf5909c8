"""Decoding off the scheduler thread: codes become images on a thread of their own, in arrival order.

A decode is one or more decoder calls over a request's whole set of images. On the scheduler thread
it would hold up the step of every image in flight; here the steps go on beside it. A backend that
cannot run its decoder while a stage call runs (`Backend.decodes_beside_steps` False) gets a real
`backend_lock`, which the scheduler holds around its steps and this thread around each decoder call:
the two then take turns call by call. Elsewhere the lock is a no-op.
"""
import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

import numpy as np

from .backends.base import Backend
from .errors import CancelledError
from .images import to_pil
from .outcomes import fail, resolve
from .step import StepTimes


@dataclass(eq=False)  # compared by identity
class DecodeWork:
    """Codes to decode: a `Generator.decode` call, or a sampling request whose codes are all drawn."""
    future: Future
    codes: np.ndarray  # [n, h, w, D] int64
    batch_size: int    # images per decoder call


class DecodeQueue:
    """Runs `DecodeWork` on `backend`'s decoder from one thread, started by the first `put`.

    Args:
        backend: the backend whose decoder runs.
    """
    times: Optional[StepTimes] = None  # set by the scheduler: decoder seconds are added to it
    _queue: deque[DecodeWork]
    _thread: Optional[threading.Thread]

    backend_lock: AbstractContextManager[Any]

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._closed = False
        self.start_afresh()

    def start_afresh(self) -> None:
        """No work, no thread, locks of its own: at the start, and in a child made by fork()."""
        self._queue, self._thread, self._lock = deque(), None, threading.Condition()
        self.backend_lock = nullcontext() if self.backend.decodes_beside_steps else threading.Lock()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def put(self, work: DecodeWork) -> None:
        with self._lock:
            if self._closed:
                fail(work.future, CancelledError("the Generator closed before this request finished"))
                return
            self._queue.append(work)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="dnd-decoder", daemon=True)
                self._thread.start()
            self._lock.notify()

    def close(self) -> None:
        """Fail the waiting decodes with CancelledError and wait for the one running to stop at its next call."""
        with self._lock:
            self._closed = True
            self._lock.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self._queue or self._closed):
                    self._lock.wait()
                if self._closed:
                    break
                work = self._queue.popleft()
            resolve(work.future, partial(self._decode, work))
        for work in self._queue:
            fail(work.future, CancelledError("the Generator closed before this request finished"))
        self._queue.clear()

    def _decode(self, work: DecodeWork) -> list:
        images = []
        for lo in range(0, len(work.codes), work.batch_size):
            if work.future.cancelled():  # timed out or interrupted: nobody waits for the rest
                raise CancelledError("the request was cancelled")
            if self._closed:
                raise CancelledError("the Generator closed before this request finished")
            t0 = time.perf_counter()
            with self.backend_lock:
                pixels = self.backend.run("decoder", {"codes": work.codes[lo:lo + work.batch_size]})["image"]
            if self.times is not None:
                self.times.decoder += time.perf_counter() - t0
            images += to_pil(pixels)
        return images
