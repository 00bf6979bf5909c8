"""OpenAI's Images API on `dnd serve`, so that the `openai` clients and the tools built on them work as they are.

    POST /v1/images/generations  {"prompt": "cat", "n": 2, "seed": 0, "cfg_scale": 2.0, ...}
                                 -> {"created", "data": [{"b64_json", "index", "label", "label_name", "seed",
                                    ...settings}], "size", "output_format": "png", "background", "quality"}
    GET  /v1/models              {"object": "list", "data": [{"id", "object": "model", "created", "owned_by",
                                    "labels", "image", "sampler_defaults", "backend", ...}]}
    GET  /v1/models/{id}         that entry, or OpenAI's 404 for another id

The body is read by `dnd_sdk.openai_request`; image j of a request is image index j of its label, the
PNG `/v1/images` and `dnd generate` give for the same label, seed and settings. Errors are OpenAI's
{"error": {"message", "type", "param", "code"}}, so that the clients raise their typed exceptions.

With `stream: true` the answer is Server-Sent Events: `image_generation.partial_image` events (with
`partial_images` k > 0: up to k per image, see dnd_sdk.partial_images), then one
`image_generation.completed` event per image, whose PNG is the one the request gives without
streaming. Every event carries the image's `index`, 0..n-1, and its metadata, so that with n > 1 the
events of the n images, which are sampled side by side, are told apart: the partial images of all
n come as each is made (each image's in order, `partial_image_index` 0, 1, ...), and the n completed
events come last, in index order, once every image is finished. A stream that cannot finish (the
request's timeout, a backend failure) ends with an `error` event instead. A client that disconnects
has its request dropped at once, its rows going to others.
"""
import asyncio
import base64
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Any, Optional

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .event_stream import EventStream, PartialDecoder, PartialImages, sse
from .generator import Generator
from .model_folder.manifest import MANIFEST_NAME
from .openai_request import Generation, image_size, read_generation, unknown_model
from .serve_steps import (
    CLIENT_GONE,
    Metrics,
    Refusal,
    await_images,
    disconnect,
    encode_pngs,
    failure,
    image_metadata,
    receive_body,
    submit,
)

# OpenAI's error types by status; a status not here is a server_error
ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 406: "invalid_request_error",
               408: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
               CLIENT_GONE: "client_closed_request", 504: "timeout_error"}
# what every image of this server is, in OpenAI's words
IMAGE_FORMAT = {"output_format": "png", "background": "opaque", "quality": "auto"}


def error_body(refusal: Refusal) -> dict:
    return {"message": refusal.message, "type": ERROR_TYPES.get(refusal.status, "server_error"),
            "param": refusal.param, "code": refusal.code}


def openai_error(refusal: Refusal) -> JSONResponse:
    return JSONResponse({"error": error_body(refusal)}, refusal.status, headers=refusal.headers)


def model_card(gen: Generator) -> dict:
    """The model as an entry of OpenAI's model list, with what this server adds: labels, sizes, defaults."""
    m = gen.manifest
    return {"id": gen.path.name, "object": "model", "created": int((gen.path / MANIFEST_NAME).stat().st_mtime),
            "owned_by": "dnd-sdk", "backend": gen.backend_name, "labels": gen.labels,
            "image": {"height": int(m.image["height"]), "width": int(m.image["width"])},
            "latent": dict(zip(("h", "w", "depth"), gen.latent_shape)), "sampler_defaults": m.sampler_defaults,
            "guidance": m.null_class is not None, "max_batch_rows": gen.scheduler.max_rows}


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


def openai_routes(gen: Generator, metrics: Metrics, timeout: Optional[float],
                  body_timeout: Optional[float]) -> list:
    """The routes of OpenAI's API, with the hardening, metrics and limits of `dnd_sdk.serve.create_app`."""
    size = image_size(gen)
    decoder = PartialDecoder(gen)

    @metrics.measure
    async def generations(request: Request) -> Response:
        try:
            raw = await receive_body(request, body_timeout)
            job = await run_in_threadpool(read_generation, gen, raw, gen.path.name)
            if job.stream:
                partials = PartialImages(gen, job.partial_images) if job.partial_images else None
                future = submit(gen, job.request, partials)
                return EventStream(_events(request, job, future, partials), future)
            pngs = await encode_pngs(await await_images(request, submit(gen, job.request), timeout))
        except Refusal as r:
            return openai_error(r)
        metrics.images.inc(len(pngs))
        request.state.images = len(pngs)
        data = [{"b64_json": _b64(p), **d} for d, p in zip(image_metadata(gen, job.request), pngs)]
        return JSONResponse({"created": int(time.time()), "data": data, "size": size, **IMAGE_FORMAT})

    async def _events(request: Request, job: Generation, future: Future,
                      partials: Optional[PartialImages]) -> AsyncIterator[str]:
        t0, status = time.perf_counter(), CLIENT_GONE  # unless the stream comes to an end of its own
        meta = image_metadata(gen, job.request)
        result, gone = asyncio.wrap_future(future), asyncio.ensure_future(disconnect(request))
        queue = partials.queue if partials is not None else asyncio.Queue[tuple]()
        getter: Optional[asyncio.Task] = None
        deadline = None if timeout is None else time.monotonic() + timeout

        def event(name: str, png: bytes, j: int, **extra: Any) -> str:
            return sse(name, {"b64_json": _b64(png), "created_at": int(time.time()), "size": size, **IMAGE_FORMAT,
                               **extra, **meta[j]})

        async def partials_due(*due: tuple) -> AsyncIterator[str]:
            for j, i, rows_done, codes in due:
                image = await decoder.png(codes, rows_done)
                if image is not None:  # None: skipped under a full queue
                    yield event("image_generation.partial_image", image, j, partial_image_index=i)

        metrics.in_progress.inc()
        try:
            while not result.done():
                getter = getter or asyncio.ensure_future(queue.get())
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, _ = await asyncio.wait((getter, result, gone), timeout=left,
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    async for text in partials_due(getter.result()):
                        yield text
                    getter = None
                elif gone in done:
                    return
                elif not done:
                    raise Refusal(504, f"the request did not finish within {timeout:g} s and was dropped; ask "
                                       "for fewer images or retry when the server is less busy")
            # the last partial images, handed over before the request finished
            async for text in partials_due(*(queue.get_nowait() for _ in range(queue.qsize()))):
                yield text
            pngs = await encode_pngs(result.result())
            for j, final in enumerate(pngs):
                yield event("image_generation.completed", final, j)
            status = 200
            metrics.images.inc(len(pngs))
            request.state.images = len(pngs)
        except Exception as e:  # headers are sent: the stream's last event says what went wrong
            refusal = failure(e)
            status = refusal.status
            yield sse("error", {"error": error_body(refusal)})
        finally:
            for task in (getter, gone):
                if task is not None:
                    task.cancel()
            future.cancel()
            metrics.in_progress.dec()
            metrics.latency.labels(str(status)).observe(time.perf_counter() - t0)

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card(gen)]})

    async def model(request: Request) -> Response:
        name = request.path_params["name"]
        if name != gen.path.name:
            return openai_error(unknown_model(name))
        return JSONResponse(model_card(gen))

    return [Route("/v1/images/generations", generations, methods=["POST"]), Route("/v1/models", models),
            Route("/v1/models/{name:path}", model)]
