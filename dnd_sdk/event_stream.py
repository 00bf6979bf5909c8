"""What a streamed image request needs beside its route: the progress hook that hands the codes of
partial images from the scheduler thread to the event loop, one batched decoder of partial images
per server, and the Server-Sent Events response that cancels its request however it ends."""
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Optional

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .errors import OverloadedError
from .generator import Generator
from .partial_images import filled_grid, grey_unfinished, partial_row_counts
from .serve_steps import png


def sse(event: str, data: dict) -> str:
    """One Server-Sent Event, its name repeated as the data's `type` (as OpenAI's events have it)."""
    return f"event: {event}\ndata: {json.dumps({'type': event, **data})}\n\n"


class PartialImages:
    """The progress hook of a streamed request: on the scheduler thread it only notes which image is due a
    partial image and puts a copy of its codes in `queue`, on the event loop, where the stream takes them in order."""

    def __init__(self, gen: Generator, partial_images: int) -> None:
        self.loop, self.queue = asyncio.get_running_loop(), asyncio.Queue[tuple]()
        self.width = gen.latent_shape[1]
        self.due = partial_row_counts(gen.latent_shape[0], partial_images)
        self.made: dict = {}  # image j -> partial images handed over so far

    def __call__(self, j: int, codes: np.ndarray) -> None:
        i = self.made.get(j, 0)
        if i < len(self.due) and len(codes) >= self.due[i] * self.width:
            self.made[j] = i + 1
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits for the image
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (j, i, self.due[i], codes))


class PartialDecoder:
    """Decodes the partial images of every stream of a server, batched: those due while a decoder call runs
    wait for the next, which takes them all at once. A decoder call costs about as much for one image as
    for several (on the Generator's decode thread), so that many streams cost far less than one call each.
    While the Generator's queue is full, the partial images due are skipped (None): their streams go on."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.pending: list[tuple[np.ndarray, int, asyncio.Future]] = []
        self.decoding: Optional[asyncio.Task] = None

    async def png(self, codes: np.ndarray, rows_done: int) -> Optional[bytes]:
        """The PNG of the partial image of `codes` [positions done, D] after `rows_done` finished rows; None
        when the Generator's queue had no room for its decode."""
        done = asyncio.get_running_loop().create_future()
        self.pending.append((filled_grid(codes, rows_done, self.gen.latent_shape), rows_done, done))
        if self.decoding is None:
            self.decoding = asyncio.ensure_future(self._decode_pending())
        return await done

    async def _decode_pending(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                pngs: list[Optional[bytes]]
                try:
                    pngs = await run_in_threadpool(self._render, [b[0] for b in batch], [b[1] for b in batch])
                except OverloadedError:  # a partial image is a preview: under a full queue it is left out
                    pngs = [None] * len(batch)
                except Exception as e:  # each stream waiting for one of these ends in an error event
                    for *_, done in batch:
                        if not done.done():
                            done.set_exception(e)
                    continue
                for (*_, done), image in zip(batch, pngs):
                    if not done.done():  # its stream has gone meanwhile
                        done.set_result(image)
        finally:
            self.decoding = None

    def _render(self, grids: list, rows_done: list) -> list:
        images = self.gen.decode(np.concatenate(grids), batch_size=len(grids))
        return [png(grey_unfinished(image, rows, self.gen.latent_shape[0])) for image, rows in zip(images, rows_done)]


class EventStream(StreamingResponse):
    """Server-Sent Events of one request, which is cancelled however the stream ends (finished, client
    gone, server stopping), so that its rows never outlive the stream."""

    def __init__(self, events: AsyncIterator[str], future: Future) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.future = future

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.future.cancel()
