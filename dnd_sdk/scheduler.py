"""The scheduler behind a `Generator`: one thread owns the backend and runs the images of every waiting
request as rows of one batch (continuous batching).

Each step runs one latent position of every image in flight: D stage calls over all rows, the
sampler between them. A request that arrives while others run takes free rows at the next step and
starts there at position 0: stage graphs v2 give every row its own position and cache slots
(`Backend.stage_step(k, hidden, positions)`), so the row's old slots are masked out and overwritten
as it goes. Sampling settings travel per image (`sampler.sample_images`), and every operation is row
by row, so an image is the image its request gives alone, whatever shares the batch.

A call runs rows 0..n-1 where n is one past the highest row in use: new images take the lowest free
rows, so the batch stays packed at the front (a free row below a busy one runs idle until it is
taken or the rows above it finish).

A process made by fork() gets a copy of the scheduler without its thread (fork copies only the
thread that calls it), and perhaps with its lock held for ever: `_after_fork` gives the child's copy
a fresh lock and queue, and its first request starts a thread of its own.

A future's done-callbacks run on the thread that sets its outcome, so each outcome is set from a
short thread of its own: a callback may call the Generator again and wait, which on the scheduler
thread would wait for itself forever.
"""
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .errors import CancelledError, OverloadedError
from .images import to_pil
from .sampler import SamplingParams, embed_codes, image_uniforms, sample_images


@dataclass(eq=False)  # compared and hashed by identity: a set of requests holds each once
class Work:
    """One submitted request: its images' codes (and then images), or a decode of given codes."""
    future: Future
    labels: Optional[np.ndarray] = None   # [n] class ids; None for a decode
    indices: Optional[np.ndarray] = None  # [n] image indices for the seeding rule
    seed: int = 0
    params: Optional[SamplingParams] = None
    batch_size: int = 16                  # at most this many of its images in flight (and per decoder call)
    want_images: bool = True
    codes: Optional[np.ndarray] = None    # [n, L, D]; given for a decode, filled in for a sample
    # progress(j, codes) after each step that advanced image j: a copy of its codes so far, [positions done, D]
    progress: Optional[Callable[[int, np.ndarray], Any]] = None
    admitted: int = 0
    running: int = 0
    finished: int = 0


@dataclass
class _Image:
    work: Work
    j: int                   # its place in work
    cond: int                # its row
    uncond: int              # its unconditional row under guidance, else -1
    u: np.ndarray            # [L, D] its uniforms
    pos: int = 0             # the latent position it samples next
    rows: tuple = field(init=False)

    def __post_init__(self) -> None:
        self.rows = (self.cond,) if self.uncond < 0 else (self.cond, self.uncond)


class Scheduler:
    """Runs `Work` on `gen`'s backend from one thread; `submit` is safe from any thread.

    Args:
        gen (dnd_sdk.Generator): supplies the backend, embedding tables, null class and latent shape.
            The scheduler keeps those, not `gen`: its thread would otherwise keep a Generator dropped
            without close() alive, and the Generator's finalizer could never close it.
        max_rows (int): rows per backend call (guidance takes two per image).
        max_queue (int): requests waiting for a row (or a decode) before `submit` raises OverloadedError.
    """
    latent_shape: tuple[int, int, int]
    _waiting: deque[Work]
    _images: list[_Image]
    _thread: Optional[threading.Thread]

    def __init__(self, gen: Any, max_rows: int, max_queue: int) -> None:
        self.backend, self.latent_shape, self.null_class = gen.backend, gen.latent_shape, gen.manifest.null_class
        self.tok_embeddings, self.cls_embedding = gen.tok_embeddings, gen.cls_embedding
        self.max_rows, self.max_queue = max_rows, max_queue
        self.listeners: list[Callable] = []  # f(images, rows, seconds) after each step, e.g. metrics
        self._closed, self._reset = False, False
        self._start_afresh()
        _LIVE.add(self)

    def _start_afresh(self) -> None:
        """No request, no thread, a lock of its own: at the start, and in a child made by fork()."""
        self._waiting, self._images = deque(), []
        self._lock = threading.Condition()
        self._thread = None

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def images_in_flight(self) -> int:
        return len(self._images)

    def submit(self, work: Work) -> Future:
        with self._lock:
            if self._closed:
                raise CancelledError("this Generator is closed; open a new one")
            if len(self._waiting) >= self.max_queue:
                raise OverloadedError(f"{len(self._waiting)} requests are waiting already (max_queue "
                                      f"{self.max_queue}); try again shortly")
            self._waiting.append(work)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="dnd-scheduler", daemon=True)
                self._thread.start()
            self._lock.notify()
        return work.future

    def close(self) -> None:
        """Stop the thread and release the backend; requests not finished get CancelledError."""
        with self._lock:
            self._closed = True
            self._lock.notify()
            thread = self._thread  # none is started once closed
        if thread is None:
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
                decodes = self._admit()
            try:
                for work in decodes:
                    _resolve(work.future, lambda w=work: self._decode(w.codes, w.batch_size, w.future))
                if self._images:
                    self._step()
            except Exception as e:  # a backend failure fails the requests it touched, not the thread
                for work in {im.work for im in self._images}:
                    _fail(work.future, e)
                self._images = []
        for work in [*self._waiting, *(im.work for im in self._images)]:
            _fail(work.future, CancelledError("the Generator closed before this request finished"))
        self.backend.close()  # here, not in close(): close() may run on this thread, amid a step

    def _drop_cancelled(self) -> None:
        self._waiting = deque(w for w in self._waiting if not w.future.done())
        self._images = [im for im in self._images if not im.work.future.done()]

    def _admit(self) -> list:
        """Give free rows to waiting images, each to the request with the fewest images running (in arrival
        order among equals): a request of many images cannot hold every row while others wait, and one that
        needs two rows (guidance) while one is free holds the rows back until its two are there, so that
        single rows going to others cannot starve it. Returns the decodes to run now."""
        if not self._waiting:
            return []
        used = {r for im in self._images for r in im.rows}
        free = [r for r in range(self.max_rows) if r not in used]
        decodes = [work for work in self._waiting if work.labels is None]
        sampling = [(work, len(work.labels)) for work in self._waiting if work.labels is not None]
        h, w, depth = self.latent_shape
        while True:
            open_ = [(work.running, i) for i, (work, count) in enumerate(sampling)
                     if work.admitted < count and work.running < work.batch_size]
            if not open_:
                break
            work = sampling[min(open_)[1]][0]
            need = 2 if work.params.guided else 1
            if len(free) < need:
                break  # it waits for its rows, and nobody takes them meanwhile
            j = work.admitted
            rows = free[:need]
            del free[:need]
            u = image_uniforms(work.seed, int(work.indices[j]), h * w * depth).reshape(h * w, depth)
            self._images.append(_Image(work, j, rows[0], rows[1] if need == 2 else -1, u))
            work.admitted, work.running = j + 1, work.running + 1
        self._waiting = deque(work for work, count in sampling if work.admitted < count)
        return decodes

    def _step(self) -> None:
        """One latent position of every image in flight."""
        t0, images = time.perf_counter(), self._images
        if not self._reset:  # the cache is allocated once; rows are restarted by position 0 from then on
            self.backend.reset(self.max_rows)
            self._reset = True
        # the rows in use, and the image (its index in `images`) of each: a guided image has two
        rows: Any = [r for im in images for r in im.rows]  # then the array of them
        n, d = 1 + max(rows), self.tok_embeddings.shape[1]
        rows, owner = np.array(rows), np.array([i for i, im in enumerate(images) for _ in im.rows])
        positions = np.zeros(n, np.int64)
        positions[rows] = [im.pos for im in images for _ in im.rows]
        hidden = np.zeros((n, 1, d), np.float32)
        later = [im for im in images if im.pos > 0]
        if later:  # the summed embeddings of the previous cell's codes, on every row of the image
            prev = np.array([im.work.codes[im.j, im.pos - 1] for im in later])
            emb = embed_codes(self.tok_embeddings, prev[:, None, :])
            hidden[[r for im in later for r in im.rows]] = emb[[i for i, im in enumerate(later) for _ in im.rows]]
        for im in images:
            if im.pos == 0:  # the condition token: the class, and the null class on the unconditional row
                hidden[im.cond] = self.cls_embedding[im.work.labels[im.j]]
                if im.uncond >= 0:
                    hidden[im.uncond] = self.cls_embedding[self.null_class]
        cond = np.array([im.cond for im in images])
        uncond = np.array([im.uncond for im in images])
        u = np.array([im.u[im.pos] for im in images])
        params = [im.work.params for im in images]
        depth = u.shape[1]
        tokens = np.empty((len(images), depth), np.int64)
        for k in range(depth):
            logits, hidden_out = self.backend.stage_step(k, hidden, positions)
            tokens[:, k] = sample_images(logits, cond, uncond, u[:, k], params, k)
            if k < depth - 1:  # every row of an image gets its token
                add = np.zeros((n, 1, d), np.float32)
                add[rows, 0] = self.tok_embeddings[tokens[owner, k]]
                hidden = hidden_out + add
        seconds = time.perf_counter() - t0
        for listener in self.listeners:  # before the step's requests are answered: it counts in their metrics
            listener(len(images), n, seconds)
        self._advance(images, tokens)

    def _advance(self, images: list, tokens: np.ndarray) -> None:
        length = self.latent_shape[0] * self.latent_shape[1]
        for im, tok in zip(images, tokens):
            im.work.codes[im.j, im.pos] = tok
            im.pos += 1
            if im.work.progress is not None:  # on this thread: the callback must be quick (e.g. hand off a copy)
                im.work.progress(im.j, im.work.codes[im.j, :im.pos].copy())
        done = [im for im in images if im.pos == length]
        with self._lock:
            self._images = [im for im in images if im.pos < length]
        for im in done:
            work = im.work
            work.running, work.finished = work.running - 1, work.finished + 1
            if work.finished == len(work.labels):
                codes = work.codes.reshape(len(work.labels), *self.latent_shape)
                _resolve(work.future, lambda: self._decode(codes, work.batch_size, work.future) if work.want_images else codes)

    def _decode(self, codes: np.ndarray, batch_size: int, future: Future) -> list:
        images = []
        for lo in range(0, len(codes), batch_size):
            if future.cancelled():  # timed out or interrupted: nobody waits for the rest
                raise CancelledError("the request was cancelled")
            images += to_pil(self.backend.run("decoder", {"codes": codes[lo:lo + batch_size]})["image"])
        return images


# every open scheduler, so that a child made by fork() can restart each one
_LIVE: weakref.WeakSet = weakref.WeakSet()


def _after_fork() -> None:
    # the parent's requests stay the parent's: their futures are waited for there, not in the child
    for scheduler in list(_LIVE):
        scheduler._start_afresh()


os.register_at_fork(after_in_child=_after_fork)


def _resolve(future: Future, compute: Callable[..., Any]) -> None:
    if future.done():  # cancelled meanwhile: its result is not wanted
        return
    try:
        result = compute()
    except Exception as e:
        _fail(future, e)
        return
    _settle(future.set_result, result)


def _fail(future: Future, error: Exception) -> None:
    _settle(future.set_exception, error)


def _settle(setter: Callable[[Any], Any], outcome: Any) -> None:
    """Set an outcome from a thread of its own, which runs the future's done-callbacks (see the module doc)."""
    def settle() -> None:
        try:
            setter(outcome)
        except InvalidStateError:  # cancelled meanwhile
            pass
    threading.Thread(target=settle, name="dnd-result", daemon=True).start()
