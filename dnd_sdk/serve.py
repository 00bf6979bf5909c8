"""`dnd serve`: one Generator behind HTTP (Starlette on uvicorn), its scheduler batching every request.

    POST /v1/images   {"labels": ["ocean"], "num": 2, "seed": 0, "cfg_scale": 2.0, ...}
                      -> {"images": [{"png": base64, "index": 0, "label": 3, ...}, ...]}, or with
                      `Accept: image/png` and one image, the PNG itself (metadata in X-Image-Metadata)
    GET  /v1/models   labels, image size, sampler defaults, backend
    GET  /health      {"status": "ok"}
    GET  /metrics     Prometheus text: queue depth, batch sizes, images, latency

Errors are JSON {"error": message}: bad input 400, a body slower than body_timeout 408, a body over
16 MiB 413, a full queue 429 (Retry-After), a timeout 504.
A request whose client disconnects is dropped at once (logged as status 499 in /metrics).
A PNG here has the very bytes `dnd generate` writes for the same (model, label, settings, seed, index).
Each request is logged as one line on the `dnd_sdk.serve` logger (method, path, status, images,
seconds), and the app's shutdown as one more. Slow clients are bounded by `dnd_sdk.connections`.
"""
import asyncio
import base64
import collections
import contextlib
import errno
import functools
import io
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Optional

import uvicorn
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .arguments import as_int, integer, seconds
from .connections import BACKLOG, ConnectionGuard, GuardedH11Protocol, connection_cap
from .errors import DndError, InvalidInputError, OverloadedError, arg
from .generator import Generator
from .images_request import ImagesRequest

RETRY_AFTER_S = 1
# Generator settings an error may name that a client cannot send: the server's own flags
SERVER_FLAGS = {"max_batch": "the server's --max-batch"}
# nginx's code for "client closed request": the reply goes nowhere, the latency metric keeps it apart
CLIENT_GONE = 499
# a body is a few request keys; even a list of a million image indices stays far below this
MAX_BODY_BYTES = 1 << 24
# no request value has more digits than an int64; int() of a longer one is slow, and past 4300 digits it raises
MAX_JSON_DIGITS = 20
# what a slow client may take, in seconds: the request head (a deadline, not renewed by each byte), the body
HEADER_TIMEOUT, BODY_TIMEOUT = 10.0, 30.0
# open connections; lowered at start to what the open-files limit allows (dnd_sdk.connections)
MAX_CONNECTIONS = 2048

log = logging.getLogger(__name__)


class Metrics:
    """The Prometheus series of one server, in its own registry."""

    def __init__(self, gen: Generator) -> None:
        self.registry = r = CollectorRegistry()
        Gauge("dnd_queue_depth", "Requests waiting for a row", registry=r).set_function(
            lambda: gen.scheduler.queue_depth)
        Gauge("dnd_images_in_flight", "Images being sampled now", registry=r).set_function(
            lambda: gen.scheduler.images_in_flight)
        self.in_progress = Gauge("dnd_requests_in_progress", "POST /v1/images requests received, not yet answered",
                                 registry=r)
        self.batch = Histogram("dnd_batch_images", "Images per backend step", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.images = Counter("dnd_images", "Images returned (images/s: rate(dnd_images_total[1m]))", registry=r)
        self.latency = Histogram("dnd_request_seconds", "POST /v1/images latency, by status", ["status"], registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        gen.scheduler.listeners.append(lambda images, rows, seconds: self.batch.observe(images))


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # Pillow's defaults, as dnd_sdk.images.save_png writes
    return buf.getvalue()


def _error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=headers)


def _in_server_words(error: InvalidInputError) -> str:
    text = str(error)
    for name in set(error.names) & set(SERVER_FLAGS):
        text = re.sub(rf"\b{name}\b", SERVER_FLAGS[name], text)
    return text


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


async def _disconnect(request: Request) -> None:
    """Return once the client has gone: with the body read, the ASGI server's next message is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class RequestLog:
    """ASGI middleware: one log line per request once it is answered (method, path, status, images,
    seconds), counted in `totals` for the line at shutdown. A handler reports its images in `request.state.images`."""

    def __init__(self, app: Any, totals: collections.Counter) -> None:
        self.app, self.totals = app, totals

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), 500  # 500 unless a response starts

        async def send_and_note(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            images = scope.get("state", {}).get("images", 0)
            self.totals.update(requests=1, images=images)
            # the path as sent, percent-escapes kept: a decoded one could put a line break in the log
            path = scope.get("raw_path", b"").decode("ascii", "replace")[:200]
            log.info("%s %s %d %d images %.3f s", scope["method"], path, status, images, time.perf_counter() - t0)


def create_app(gen: Generator, timeout: Optional[float] = 300.0, body_timeout: Optional[float] = BODY_TIMEOUT) -> Starlette:
    """The ASGI app serving `gen` (a dnd_sdk.Generator); `timeout` is the most seconds a request may take,
    `body_timeout` the most its body may take to arrive (both InvalidInputError unless > 0 and finite)."""
    timeout = seconds(timeout, "timeout", minimum_open=True)
    body_timeout = seconds(body_timeout, "body_timeout", minimum_open=True)
    metrics = Metrics(gen)
    m = gen.manifest

    async def images(request: Request) -> Response:
        t0 = time.perf_counter()
        with metrics.in_progress.track_inprogress():
            response = await _images(request)
        metrics.latency.labels(str(response.status_code)).observe(time.perf_counter() - t0)
        return response

    def _parse(raw: bytes, want_png: bool) -> Any:
        """The request of a body, parsed and validated; or the error Response."""
        try:
            body = json.loads(raw, parse_int=_json_int)
        except InvalidInputError as e:
            return _error(400, str(e))
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the body must be a JSON object, e.g. {\"labels\": [\"cat\"], \"seed\": 0}")
        except RecursionError:
            return _error(400, "the body is nested too deeply; it must be a JSON object of request keys")
        try:
            asked = ImagesRequest.from_json(body)  # batch_size is the server's business: no key sets it
            req = gen.request(asked.labels, asked.num, seed=asked.seed, sampling=asked.sampling, start=asked.start,
                              image_indices=asked.image_indices)
            if want_png and len(req.labels) != 1:
                return _error(406, f"Accept: image/png returns one image, but {len(req.labels)} were asked for; "
                                   "ask for num 1, or accept application/json")
            return req
        except InvalidInputError as e:
            return _error(400, _in_server_words(e))

    async def _images(request: Request) -> Response:
        try:
            raw = await asyncio.wait_for(_read_body(request), body_timeout)
        except asyncio.TimeoutError:
            return _error(408, f"the body did not arrive within {body_timeout:g} s; send it at once",
                          {"Connection": "close"})
        except ClientDisconnect:
            return _error(CLIENT_GONE, "the client disconnected before its body arrived")
        if raw is None:
            return _error(413, f"the body is over {MAX_BODY_BYTES >> 20} MiB; ask for many images with num and "
                               "start rather than listing them")
        want_png = "image/png" in request.headers.get("accept", "")
        # parsing and validating a 16 MiB body takes seconds: off the event loop, so /health never waits for it
        req = await run_in_threadpool(_parse, raw, want_png)
        if isinstance(req, Response):
            return req
        try:  # here, not in the thread: a handler cancelled meanwhile must leave nothing queued
            future = gen.submit(req)
        except OverloadedError as e:
            return _error(429, str(e), {"Retry-After": str(RETRY_AFTER_S)})
        result, gone = asyncio.wrap_future(future), asyncio.ensure_future(_disconnect(request))
        try:
            done, _ = await asyncio.wait((result, gone), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            future.cancel()  # nobody waits for it any more (a no-op once it finished): its rows go to others
        if gone in done and result not in done:
            return _error(CLIENT_GONE, "the client disconnected; the request was dropped")
        if result not in done:
            return _error(504, f"the request did not finish within {timeout:g} s and was dropped; ask for fewer "
                               "images or retry when the server is less busy")
        pngs = await run_in_threadpool(lambda: [_png(im) for im in result.result()])
        metrics.images.inc(len(pngs))
        request.state.images = len(pngs)
        settings = req.params.as_dict()
        meta = [{"index": int(i), "label": int(c), "label_name": gen.labels[c], "seed": req.seed, **settings}
                for i, c in zip(req.indices, req.labels)]
        if want_png:
            return Response(pngs[0], media_type="image/png", headers={"X-Image-Metadata": json.dumps(meta[0])})
        return JSONResponse({"images": [{**d, "png": base64.b64encode(p).decode()} for d, p in zip(meta, pngs)]})

    async def models(request: Request) -> Response:
        return JSONResponse({"models": [{
            "id": gen.path.name, "backend": gen.backend_name, "labels": gen.labels,
            "image": {"height": int(m.image["height"]), "width": int(m.image["width"])},
            "latent": dict(zip(("h", "w", "depth"), gen.latent_shape)), "sampler_defaults": m.sampler_defaults,
            "guidance": m.null_class is not None, "max_batch_rows": gen.scheduler.max_rows}]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # here, not after the server returns: after a SIGTERM uvicorn raises the signal again once drained
        log.info("stopped serving %s after %d requests, %d images", gen.path, totals["requests"], totals["images"])

    totals: collections.Counter = collections.Counter()
    return Starlette(routes=[Route("/v1/images", images, methods=["POST"]), Route("/v1/models", models),
                             Route("/health", health), Route("/metrics", prometheus)],
                     middleware=[Middleware(RequestLog, totals=totals)], lifespan=lifespan)


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket listening on (host, port): bound before the server says where it is, so that a port
    in use is an error, and listening, so that a client that comes at once waits to be accepted.

    Raises:
        DndError: the address is in use, not this machine's, or not allowed (naming host or port).
    """
    port = integer(port, "port", 0, 65535)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError) as e:
        raise DndError(f"{arg('host')} {host!r} is not an address this machine can listen on ({e}); give an IP "
                       "address such as 127.0.0.1 or 0.0.0.0") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise DndError(f"{arg('port')} {port} on {host} is in use; choose another {arg('port')}, or stop what "
                           "holds it") from None
        if e.errno == errno.EACCES:
            raise DndError(f"{arg('port')} {port} needs privileges here; choose a port of 1024 or more") from None
        raise DndError(f"cannot listen on {host}:{port} ({e.strerror}); check {arg('host')} and {arg('port')}") from None
    sock.listen(BACKLOG)
    return sock


def run_server(gen: Generator, sock: socket.socket, timeout: float = 300.0, *, header_timeout: float = HEADER_TIMEOUT,
               body_timeout: float = BODY_TIMEOUT, max_connections: int = MAX_CONNECTIONS,
               on_start: Optional[Callable[[int], Any]] = None) -> None:
    """Serve `gen` on `sock` (from `bind`) until SIGTERM or Ctrl-C: uvicorn then stops accepting and lets
    the requests in flight finish; after Ctrl-C it returns, and a SIGTERM it raises again once drained,
    so that the process ends the way a supervisor expects of a signal.

    A request head must arrive within header_timeout seconds, its body within body_timeout; at most
    max_connections are open (fewer where the open-files limit demands), and past that, of those still
    sending a request, the one at it longest is closed (see dnd_sdk.connections). `on_start(connections)`
    is called once every setting is checked, with the connection cap in force.
    """
    app = create_app(gen, timeout, body_timeout)
    guard = ConnectionGuard(seconds(header_timeout, "header_timeout", minimum_open=True) or HEADER_TIMEOUT,
                            connection_cap(integer(max_connections, "max_connections", 1)))
    if on_start is not None:
        on_start(guard.max_connections)
    protocol = functools.partial(GuardedH11Protocol, guard=guard)  # uvicorn calls it as it calls its own class
    config = uvicorn.Config(app, http=protocol, ws="none", backlog=BACKLOG,  # type: ignore[arg-type]
                            log_level="warning", access_log=False,
                            timeout_graceful_shutdown=timeout)  # type: ignore[arg-type]  # a float works as well
    uvicorn.Server(config).run(sockets=[sock])
