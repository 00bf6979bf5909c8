"""`dnd serve`: one Generator behind HTTP (Starlette on uvicorn), its scheduler batching every request.

    POST /v1/images   {"labels": ["ocean"], "num": 2, "seed": 0, "cfg_scale": 2.0, ...}
                      -> {"images": [{"png": base64, "index": 0, "label": 3, ...}, ...]}, or with
                      `Accept: image/png` and one image, the PNG itself (metadata in X-Image-Metadata)
    GET  /v1/models   labels, image size, sampler defaults, backend
    GET  /health      {"status": "ok"}
    GET  /metrics     Prometheus text: queue depth, batch sizes, images, latency

Errors are JSON {"error": message}: bad input 400, a body over 16 MiB 413, a full queue 429 (Retry-After),
a timeout 504.
A request whose client disconnects is dropped at once (logged as status 499 in /metrics).
A PNG here has the very bytes `dnd generate` writes for the same (model, label, settings, seed, index).
"""
import asyncio
import base64
import io
import json
import re
import time
from typing import Optional

import uvicorn
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import InvalidInputError, OverloadedError
from .generator import Generator

# the request keys POST /v1/images takes: Generator.request's arguments, less batch_size (the server's business)
REQUEST_KEYS = ("labels", "num", "seed", "start", "image_indices", "cfg_scale", "temperature", "top_k", "top_p",
                "head_temperatures")
RETRY_AFTER_S = 1
# Generator settings an error may name that a client cannot send: the server's own flags
SERVER_FLAGS = {"max_batch": "the server's --max-batch"}
# nginx's code for "client closed request": the reply goes nowhere, the latency metric keeps it apart
CLIENT_GONE = 499
# a body is a few request keys; even a list of a million image indices stays far below this
MAX_BODY_BYTES = 1 << 24


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


async def _read_body(request: Request) -> Optional[bytes]:
    """The request's body, or None once it passes MAX_BODY_BYTES (read no further: memory stays bounded)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
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


def create_app(gen: Generator, timeout: float = 300.0) -> Starlette:
    """The ASGI app serving `gen` (a dnd_sdk.Generator); `timeout` is the most seconds a request may take."""
    metrics = Metrics(gen)
    m = gen.manifest

    async def images(request: Request) -> Response:
        t0 = time.perf_counter()
        with metrics.in_progress.track_inprogress():
            response = await _images(request)
        metrics.latency.labels(str(response.status_code)).observe(time.perf_counter() - t0)
        return response

    async def _images(request: Request) -> Response:
        raw = await _read_body(request)
        if raw is None:
            return _error(413, f"the body is over {MAX_BODY_BYTES >> 20} MiB; ask for many images with num and "
                               "start rather than listing them")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the body must be a JSON object, e.g. {\"labels\": [\"cat\"], \"seed\": 0}")
        except RecursionError:
            return _error(400, "the body is nested too deeply; it must be a JSON object of request keys")
        if not isinstance(body, dict) or set(body) - set(REQUEST_KEYS):
            unknown = sorted(set(body) - set(REQUEST_KEYS)) if isinstance(body, dict) else body
            return _error(400, f"the body must be a JSON object of {', '.join(REQUEST_KEYS)}; got {unknown!r}")
        want_png = "image/png" in request.headers.get("accept", "")
        try:
            req = gen.request(**body)
            if want_png and len(req.labels) != 1:
                return _error(406, f"Accept: image/png returns one image, but {len(req.labels)} were asked for; "
                                   "ask for num 1, or accept application/json")
            future = gen.submit(req)
        except InvalidInputError as e:
            return _error(400, _in_server_words(e))
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

    return Starlette(routes=[Route("/v1/images", images, methods=["POST"]), Route("/v1/models", models),
                             Route("/health", health), Route("/metrics", prometheus)])


def run_server(gen: Generator, host: str, port: int, timeout: float = 300.0) -> None:
    """Serve `gen` until SIGTERM or Ctrl-C: uvicorn then stops accepting and lets the requests in flight
    finish; after Ctrl-C it returns, and a SIGTERM it raises again once drained, so that the process ends
    the way a supervisor expects of a signal."""
    uvicorn.run(create_app(gen, timeout), host=host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=timeout)  # type: ignore[arg-type]  # a float works as well
