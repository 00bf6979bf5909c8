"""The scheduler behind a `Generator`: one thread runs the images of every waiting request as rows
of one batch (continuous batching). This module is the policy: which images run, in which rows, and
when a request is answered. The work of a step is `step.run_position`, and decoding is
`decode_queue.DecodeQueue`'s, on a thread of its own, so that a finished request's decode never holds
up the images in flight.

Each step runs one latent position of every image in flight: D stage calls over all rows, the
sampler between them. A request that arrives while others run takes free rows at the next step and
starts there at position 0: stage graphs v2 give every row its own position and cache slots
(`Backend.stage_step(k, hidden, positions)`), so the row's old slots are masked out and overwritten
as it goes. Sampling settings travel per image (`sampler.sample_images`), and every operation is row
by row, so an image is the image its request gives alone, whatever shares the batch.

A call runs rows 0..n-1 where n is one past the highest row in use: new images take the lowest free
rows, so the batch stays packed at the front (a free row below a busy one runs idle until it is
taken or the rows above it finish).

A process made by fork() gets a copy of the scheduler without its threads (fork copies only the
thread that calls it), and perhaps with its locks held for ever: `_after_fork` gives the child's copy
fresh locks and queues, and its first request starts threads of its own.

Outcomes are set through `dnd_sdk.outcomes`, from short threads of their own (see there why).
"""
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import numpy as np

from .backends.base import Backend
from .decode_queue import DecodeQueue, DecodeWork
from .errors import CancelledError, OverloadedError
from .outcomes import fail, succeed
from .sampler import SamplingParams, image_uniforms
from .step import Batch, Embeddings, StepTimes, run_position

# progress(j, codes): image j of a request advanced; codes int64 [positions done, D], a copy
Progress = Callable[[int, np.ndarray], None]


@dataclass(eq=False)  # compared and hashed by identity: a set of requests holds each once
class SampleWork:
    """One sampling request: its images' codes, then (want_images) their images."""
    future: Future
    labels: np.ndarray      # [n] class ids
    indices: np.ndarray     # [n] image indices for the seeding rule
    seed: int
    params: SamplingParams
    batch_size: int         # at most this many of its images in flight (and per decoder call)
    want_images: bool
    codes: np.ndarray       # [n, L, D], filled in as its images advance
    progress: Optional[Progress] = None  # called on the scheduler thread after each step its images advance
    admitted: int = 0
    running: int = 0
    finished: int = 0


@dataclass
class _Image:
    work: SampleWork
    j: int                   # its place in work
    cond: int                # its row
    uncond: int              # its unconditional row under guidance, else -1
    u: np.ndarray            # [L, D] its uniforms
    pos: int = 0             # the latent position it samples next
    rows: tuple = field(init=False)

    def __post_init__(self) -> None:
        self.rows = (self.cond,) if self.uncond < 0 else (self.cond, self.uncond)


class _Layout(NamedTuple):
    """Where the images in flight run: the first fields of a `step.Batch`, the same from step to step
    until an image joins or leaves."""
    cond: np.ndarray
    uncond: np.ndarray
    rows: np.ndarray
    owner: np.ndarray
    width: int

    @classmethod
    def of(cls, images: list[_Image]) -> "_Layout":
        cond, uncond = [im.cond for im in images], [im.uncond for im in images]
        guided = [i for i, r in enumerate(uncond) if r >= 0]
        rows = cond + [uncond[i] for i in guided]
        return cls(np.array(cond), np.array(uncond), np.array(rows), np.array([*range(len(images)), *guided]),
                   1 + max(rows))


class Scheduler:
    """Runs sampling and decoding on `backend` from its threads; `submit` is safe from any thread.

    Args:
        backend: the opened backend; the scheduler closes it.
        tables: the embedding tables and null class a step reads.
        latent_shape: (h, w, D) of an image's codes.
        max_rows: rows per backend call (guidance takes two per image).
        max_queue: requests waiting for a row or a decode before `submit` raises OverloadedError.

    The scheduler holds no Generator: its thread would otherwise keep a Generator dropped without
    close() alive, and the Generator's finalizer could never close it.
    """
    _waiting: deque[SampleWork]
    _images: list[_Image]
    _thread: Optional[threading.Thread]

    def __init__(self, backend: Backend, tables: Embeddings, latent_shape: tuple[int, int, int], max_rows: int,
                 max_queue: int) -> None:
        self.backend, self.tables, self.latent_shape = backend, tables, latent_shape
        self.max_rows, self.max_queue = max_rows, max_queue
        self.listeners: list[Callable[[int, int, float], None]] = []  # f(images, rows, seconds) after each step
        self._times: Optional[StepTimes] = None
        self._closed, self._reset = False, False
        self._decodes = DecodeQueue(backend)
        self._start_afresh()
        _LIVE.add(self)

    def _start_afresh(self) -> None:
        """No request, no thread, locks of their own: at the start, and in a child made by fork()."""
        self._waiting, self._images = deque(), []
        self._layout: Optional[_Layout] = None  # the rows of `_images`, rebuilt whenever its membership changes
        self._lock = threading.Condition()
        self._thread = None
        self._decodes.start_afresh()

    @property
    def times(self) -> Optional[StepTimes]:
        """Install a StepTimes here to have every step and decode add its seconds to it (None: nothing is timed)."""
        return self._times

    @times.setter
    def times(self, times: Optional[StepTimes]) -> None:
        self._times = self._decodes.times = times

    @property
    def queue_depth(self) -> int:
        return len(self._waiting) + self._decodes.waiting

    @property
    def images_in_flight(self) -> int:
        return len(self._images)

    def submit(self, work: SampleWork | DecodeWork) -> Future:
        with self._lock:
            if self._closed:
                raise CancelledError("this Generator is closed; open a new one")
            if self.queue_depth >= self.max_queue:
                raise OverloadedError(f"{self.queue_depth} requests are waiting already (max_queue "
                                      f"{self.max_queue}); try again shortly")
            if isinstance(work, DecodeWork):
                self._decodes.put(work)
                return work.future
            self._waiting.append(work)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="dnd-scheduler", daemon=True)
                self._thread.start()
            self._lock.notify()
        return work.future

    def close(self) -> None:
        """Stop the threads and release the backend; requests not finished get CancelledError."""
        with self._lock:
            self._closed = True
            self._lock.notify()
            thread = self._thread  # none is started once closed
        if thread is None:
            self._decodes.close()
            self.backend.close()
        elif thread is not threading.current_thread():  # else the loop releases the backend as it ends
            thread.join()

    # --- the scheduler thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self._waiting or self._images or self._closed):
                    self._lock.wait()
                if self._closed:
                    break
                self._drop_cancelled()
                self._admit()
            try:
                if self._images:
                    self._step()
            except Exception as e:  # a backend failure fails the requests it touched, not the thread
                touched = {im.work for im in self._images}
                for work in touched:
                    fail(work.future, e)
                with self._lock:  # their images not yet admitted wait no more (fail() sets the outcome later)
                    self._waiting = deque(w for w in self._waiting if w not in touched)
                self._images, self._layout = [], None
        for work in [*self._waiting, *(im.work for im in self._images)]:
            fail(work.future, CancelledError("the Generator closed before this request finished"))
        self._decodes.close()  # waits for a decode under way: the backend is closed next
        self.backend.close()  # here, not in close(): close() may run on this thread, amid a step

    def _drop_cancelled(self) -> None:
        self._waiting = deque(w for w in self._waiting if not w.future.done())
        running = [im for im in self._images if not im.work.future.done()]
        if len(running) < len(self._images):
            self._images, self._layout = running, None

    def _admit(self) -> None:
        """Give free rows to waiting images, each to the request with the fewest images running (in arrival
        order among equals): a request of many images cannot hold every row while others wait, and one that
        needs two rows (guidance) while one is free holds the rows back until its two are there, so that
        single rows going to others cannot starve it."""
        if not self._waiting:
            return
        used = {r for im in self._images for r in im.rows}
        free = [r for r in range(self.max_rows) if r not in used]
        h, w, depth = self.latent_shape
        waiting = list(self._waiting)
        while True:
            open_ = [(work.running, i) for i, work in enumerate(waiting)
                     if work.admitted < len(work.labels) and work.running < work.batch_size]
            if not open_:
                break
            work = waiting[min(open_)[1]]
            need = 2 if work.params.guided else 1
            if len(free) < need:
                break  # it waits for its rows, and nobody takes them meanwhile
            j = work.admitted
            rows = free[:need]
            del free[:need]
            u = image_uniforms(work.seed, int(work.indices[j]), h * w * depth).reshape(h * w, depth)
            self._images.append(_Image(work, j, rows[0], rows[1] if need == 2 else -1, u))
            self._layout = None
            work.admitted, work.running = j + 1, work.running + 1
        self._waiting = deque(work for work in waiting if work.admitted < len(work.labels))

    def _step(self) -> None:
        """One latent position of every image in flight."""
        t0, images = time.perf_counter(), self._images
        if self._layout is None:
            self._layout = _Layout.of(images)
        batch = Batch(*self._layout, positions=np.array([im.pos for im in images]),
                      # at position 0 the row read is any one (the last cell's zeros): the step feeds the class
                      previous=np.array([im.work.codes[im.j, im.pos - 1] for im in images]),
                      labels=np.array([im.work.labels[im.j] for im in images]),
                      u=np.array([im.u[im.pos] for im in images]), params=[im.work.params for im in images])
        with self._decodes.backend_lock:
            if not self._reset:  # the cache is allocated once; rows are restarted by position 0 from then on
                self.backend.reset(self.max_rows)
                self._reset = True
            tokens = run_position(self.backend, self.tables, batch, self._times)
        seconds = time.perf_counter() - t0
        for listener in self.listeners:  # before the step's requests are answered: it counts in their metrics
            listener(len(images), batch.width, seconds)
        self._advance(images, tokens)

    def _advance(self, images: list[_Image], tokens: np.ndarray) -> None:
        length = self.latent_shape[0] * self.latent_shape[1]
        failed = set()
        for im, tok in zip(images, tokens):
            work = im.work
            work.codes[im.j, im.pos] = tok
            im.pos += 1
            if work.progress is not None and work not in failed and not self._report(work, im):
                failed.add(work)
        with self._lock:
            running = [im for im in images if im.pos < length and im.work not in failed]
            if len(running) < len(images):
                self._images, self._layout = running, None
            if failed:  # a request whose progress raised is answered with that error, and admits no more images
                self._waiting = deque(w for w in self._waiting if w not in failed)
        for im in images:
            work = im.work
            if im.pos < length or work in failed:
                continue
            work.running, work.finished = work.running - 1, work.finished + 1
            if work.finished == len(work.labels):
                codes = work.codes.reshape(len(work.labels), *self.latent_shape)
                if work.want_images:
                    self._decodes.put(DecodeWork(work.future, codes, work.batch_size))
                elif not work.future.done():
                    succeed(work.future, codes)

    @staticmethod
    def _report(work: SampleWork, im: _Image) -> bool:
        """Call the request's progress hook for image `im`; False (and the request fails) if it raised."""
        assert work.progress is not None
        try:
            work.progress(im.j, work.codes[im.j, :im.pos].copy())
        except Exception as e:
            fail(work.future, e)
            return False
        return True


# every open scheduler, so that a child made by fork() can restart each one
_LIVE: weakref.WeakSet = weakref.WeakSet()


def _after_fork() -> None:
    # the parent's requests stay the parent's: their futures are waited for there, not in the child
    for scheduler in list(_LIVE):
        scheduler._start_afresh()


os.register_at_fork(after_in_child=_after_fork)


