"""`dnd serve`: one Generator behind HTTP (Starlette on uvicorn), its scheduler batching every request.

    POST /v1/images   {"labels": ["ocean"], "num": 2, "seed": 0, "cfg_scale": 2.0, ...}
                      -> {"images": [{"png": base64, "index": 0, "label": 3, ...}, ...]}, or with
                      `Accept: image/png` and one image, the PNG itself (metadata in X-Image-Metadata)
    POST /v1/images/generations, GET /v1/models   OpenAI's Images API (dnd_sdk.openai_api)
    GET  /health      {"status": "ok"}
    GET  /metrics     Prometheus text: queue depth, batch sizes, images, latency
    GET  /            a page to generate images in the browser (dnd_sdk.web_page)

Errors of /v1/images are JSON {"error": message} (the OpenAI routes' are OpenAI's): bad input 400, a body
slower than body_timeout 408, a body over 16 MiB 413, a full queue 429 (Retry-After), a timeout 504.
A request whose client disconnects is dropped at once (logged as status 499 in /metrics).
A PNG here has the very bytes `dnd generate` writes for the same (model, label, settings, seed, index).
Each request is logged as one line on the `dnd_sdk.serve` logger (method, path, status, images,
seconds), and the app's shutdown as one more. Slow clients are bounded by `dnd_sdk.connections`.
"""
import base64
import collections
import contextlib
import errno
import functools
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Optional

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .arguments import integer, seconds
from .connections import BACKLOG, ConnectionGuard, GuardedH11Protocol, connection_cap
from .errors import DndError, InvalidInputError, arg
from .generator import Generator
from .images_request import ImagesRequest
from .openai_api import openai_routes
from .serve_steps import (
    Metrics,
    Refusal,
    await_images,
    encode_pngs,
    image_metadata,
    in_words,
    parse_json,
    receive_body,
    submit,
)
from .web_page import page_routes

# what a slow client may take, in seconds: the request head (a deadline, not renewed by each byte), the body
HEADER_TIMEOUT, BODY_TIMEOUT = 10.0, 30.0
# open connections; lowered at start to what the open-files limit allows (dnd_sdk.connections)
MAX_CONNECTIONS = 2048

log = logging.getLogger(__name__)


def _error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers=headers)


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

    def _parse(raw: bytes, want_png: bool) -> Any:
        """The request of a body, parsed and validated; or the error Response."""
        try:
            body = parse_json(raw, '{"labels": ["cat"], "seed": 0}')
        except InvalidInputError as e:
            return _error(400, str(e))
        try:
            asked = ImagesRequest.from_json(body)  # batch_size is the server's business: no key sets it
            req = gen.request(asked.labels, asked.num, seed=asked.seed, sampling=asked.sampling, start=asked.start,
                              image_indices=asked.image_indices)
            if want_png and len(req.labels) != 1:
                return _error(406, f"Accept: image/png returns one image, but {len(req.labels)} were asked for; "
                                   "ask for num 1, or accept application/json")
            return req
        except InvalidInputError as e:
            return _error(400, in_words(e))

    @metrics.measure
    async def images(request: Request) -> Response:
        try:
            raw = await receive_body(request, body_timeout)
            want_png = "image/png" in request.headers.get("accept", "")
            # parsing and validating a 16 MiB body takes seconds: off the event loop, so /health never waits for it
            req = await run_in_threadpool(_parse, raw, want_png)
            if isinstance(req, Response):
                return req
            pngs = await encode_pngs(await await_images(request, submit(gen, req), timeout))
        except Refusal as r:
            return _error(r.status, r.message, r.headers)
        metrics.images.inc(len(pngs))
        request.state.images = len(pngs)
        meta = image_metadata(gen, req)
        if want_png:
            return Response(pngs[0], media_type="image/png", headers={"X-Image-Metadata": json.dumps(meta[0])})
        return JSONResponse({"images": [{**d, "png": base64.b64encode(p).decode()} for d, p in zip(meta, pngs)]})

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
    return Starlette(routes=[Route("/v1/images", images, methods=["POST"]), Route("/health", health),
                             Route("/metrics", prometheus), *openai_routes(gen, metrics, timeout, body_timeout),
                             *page_routes()],
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
