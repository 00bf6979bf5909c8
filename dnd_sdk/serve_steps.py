"""The steps of every image route of `dnd serve` (`POST /v1/images` in dnd_sdk.serve, OpenAI's in
dnd_sdk.openai_api): read the body within its limits, parse it, queue the request, wait for its images
while watching the client and the clock, encode the PNGs, and count it all in the metrics. A step that
cannot go on raises Refusal, which each route answers in its own error shape.
"""
import asyncio
import io
import json
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, Optional

from PIL import Image
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from .arguments import as_int
from .errors import CancelledError, InvalidInputError, OverloadedError
from .generator import Generator, Request as Request_

RETRY_AFTER_S = 1
# Generator settings an error may name that a client cannot send: the server's own flags
SERVER_FLAGS = {"max_batch": "the server's --max-batch"}
# nginx's code for "client closed request": the reply goes nowhere, the latency metric keeps it apart
CLIENT_GONE = 499
# a body is a few request keys; even a list of a million image indices stays far below this
MAX_BODY_BYTES = 1 << 24
# no request value has more digits than an int64; int() of a longer one is slow, and past 4300 digits it raises
MAX_JSON_DIGITS = 20


class Metrics:
    """The Prometheus series of one server, in its own registry. Both image routes count in the same
    series (POST /v1/images and /v1/images/generations)."""

    def __init__(self, gen: Generator) -> None:
        self.registry = r = CollectorRegistry()
        Gauge("dnd_queue_depth", "Requests waiting for a row", registry=r).set_function(
            lambda: gen.scheduler.queue_depth)
        Gauge("dnd_images_in_flight", "Images being sampled now", registry=r).set_function(
            lambda: gen.scheduler.images_in_flight)
        self.in_progress = Gauge("dnd_requests_in_progress", "Image requests received, not yet answered",
                                 registry=r)
        self.batch = Histogram("dnd_batch_images", "Images per backend step", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.images = Counter("dnd_images", "Images returned (images/s: rate(dnd_images_total[1m]))", registry=r)
        self.latency = Histogram("dnd_request_seconds", "Image request latency, by status", ["status"], registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        gen.scheduler.listeners.append(lambda images, rows, seconds: self.batch.observe(images))

    def measure(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """`handler`, counted among the requests in progress and in the latency by status. A response that
        streams is not answered when the handler returns: it counts itself (see dnd_sdk.openai_api)."""
        async def measured(request: Request) -> Response:
            t0 = time.perf_counter()
            with self.in_progress.track_inprogress():
                response = await handler(request)
            if not isinstance(response, StreamingResponse):
                self.latency.labels(str(response.status_code)).observe(time.perf_counter() - t0)
            return response
        return measured


class Refusal(Exception):
    """An image request answered with an HTTP error, not images: each route writes it in its own shape.
    `param` names the request key at fault and `code` says what went wrong in a word, where they can."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None, param: Optional[str] = None,
                 code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.headers, self.param, self.code = status, message, headers, param, code


def image_metadata(gen: Generator, req: Request_) -> list:
    """What the server says of each image of `req` beside its PNG: index, label, its name, seed, settings."""
    settings = req.params.as_dict()
    return [{"index": int(i), "label": int(c), "label_name": gen.labels[c], "seed": req.seed, **settings}
            for i, c in zip(req.indices, req.labels)]


async def encode_pngs(images: list) -> list:
    return await run_in_threadpool(lambda: [png(im) for im in images])


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # Pillow's defaults, as dnd_sdk.images.save_png writes
    return buf.getvalue()


def in_words(error: InvalidInputError, words: Optional[dict] = None) -> str:
    """The error's message in the client's words: each argument it names that is in `words` (default: the
    server's flags) replaced by what the client calls it."""
    text, words = str(error), SERVER_FLAGS if words is None else words
    for name in set(error.names) & set(words):
        text = re.sub(rf"\b{name}\b", words[name], text)
    return text


def parse_json(raw: bytes, example: str) -> Any:
    """The JSON of a request body; InvalidInputError (giving `example`, a good body) if it is none."""
    try:
        return json.loads(raw, parse_int=_json_int)
    except InvalidInputError:  # an integer too long (_json_int)
        raise
    except (ValueError, UnicodeDecodeError):
        raise InvalidInputError(f"the body must be a JSON object, e.g. {example}") from None
    except RecursionError:
        raise InvalidInputError("the body is nested too deeply; it must be a JSON object of request keys") from None


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_DIGITS:
        raise InvalidInputError(f"the body holds an integer of {len(text.lstrip('-'))} digits; every integer a "
                                f"request takes has at most {MAX_JSON_DIGITS - 1}")
    return int(text)


async def _read_body(request: Request) -> Optional[bytes]:
    """The request's body, or None once it passes MAX_BODY_BYTES (read no further: memory stays bounded)."""
    declared = request.headers.get("content-length")
    if declared is not None and as_int(declared, 0, MAX_BODY_BYTES, digits=True) is None:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


async def receive_body(request: Request, body_timeout: Optional[float]) -> bytes:
    """The request's whole body, or Refusal: 408 past body_timeout, 413 past MAX_BODY_BYTES, the client gone."""
    try:
        raw = await asyncio.wait_for(_read_body(request), body_timeout)
    except asyncio.TimeoutError:
        raise Refusal(408, f"the body did not arrive within {body_timeout:g} s; send it at once",
                      {"Connection": "close"}) from None
    except ClientDisconnect:
        raise Refusal(CLIENT_GONE, "the client disconnected before its body arrived") from None
    if raw is None:
        raise Refusal(413, f"the body is over {MAX_BODY_BYTES >> 20} MiB; ask for many images with num and "
                           "start rather than listing them")
    return raw


def submit(gen: Generator, req: Request_, progress: Optional[Callable[[int, Any], Any]] = None) -> Future:
    """`gen.submit(req)`, or Refusal 429 when the queue is full. Call it on the event loop, not in a thread:
    a handler cancelled meanwhile must leave nothing queued."""
    try:
        return gen.submit(req, progress=progress)
    except OverloadedError as e:
        raise Refusal(429, str(e), {"Retry-After": str(RETRY_AFTER_S)}) from None


async def disconnect(request: Request) -> None:
    """Return once the client has gone: with the body read, the ASGI server's next message is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def await_images(request: Request, future: Future, timeout: Optional[float]) -> list:
    """The images of a submitted request, or Refusal: the client gone, or no result within `timeout`.
    Either way the request is cancelled, its rows going to others."""
    result, gone = asyncio.wrap_future(future), asyncio.ensure_future(disconnect(request))
    try:
        done, _ = await asyncio.wait((result, gone), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        future.cancel()  # nobody waits for it any more (a no-op once it finished): its rows go to others
    if gone in done and result not in done:
        raise Refusal(CLIENT_GONE, "the client disconnected; the request was dropped")
    if result not in done:
        raise Refusal(504, f"the request did not finish within {timeout:g} s and was dropped; ask for fewer "
                           "images or retry when the server is less busy")
    try:
        return result.result()
    except Exception as e:
        raise failure(e) from None


def failure(error: Exception) -> Refusal:
    """What to answer for a request that failed once queued: 503 when the Generator closed under it (the
    server is stopping), 500 naming the error for anything else (a backend failure, say)."""
    if isinstance(error, Refusal):
        return error
    if isinstance(error, CancelledError):
        return Refusal(503, f"the server is stopping and dropped the request ({error}); retry shortly",
                       {"Retry-After": str(RETRY_AFTER_S)})
    return Refusal(500, f"the request failed: {type(error).__name__}: {error}")
