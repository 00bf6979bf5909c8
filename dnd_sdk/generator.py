"""`Generator`: sample images from an exported model folder with numpy and ONNX Runtime (or TensorRT), no torch.

    gen = Generator("model_dir")                       # backend="auto": TensorRT, ORT CUDA, ORT CPU
    images = gen.sample(labels=["ocean", 3], seed=0)   # list of PIL images
    codes = gen.sample_codes(num=8, seed=0)            # int64 [8, h, w, D], image i of class i % num_classes
    images = gen.decode(codes)

A Generator is safe to share between threads: one scheduler thread runs the images of all
concurrent calls as rows of one batch (`dnd_sdk.scheduler`), and a decode thread turns finished
codes into images; every call returns what it returns alone, bit for bit.
"""
import dataclasses
import logging
import os
import weakref
from collections.abc import Sequence
from concurrent.futures import Future, TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .arguments import integer, seconds, shown
from .backends import open_backend
from .decode_queue import DecodeWork
from .errors import InvalidInputError, RequestTimeoutError, arg
from .model_folder.files import load_embeddings
from .model_folder.manifest import load_manifest
from .requests import ModelFacts, Request, chosen_sampling, resolve_request
from .sampler import SamplingParams, settings_in
from .scheduler import Progress, SampleWork, Scheduler
from .step import Embeddings

__all__ = ["Generator", "Request"]

log = logging.getLogger(__name__)


# rows per call where the backend sets no limit. The ONNX Runtime backend's cache is np.zeros, whose pages
# the OS maps only once a row is used: rows never used cost address space, not memory.
DEFAULT_ROWS = 64


def _float32_table(table: np.ndarray) -> np.ndarray:
    if table.dtype == np.uint16:  # bf16 bit patterns: the top half of a float32
        return (table.astype(np.uint32) << 16).view(np.float32)
    return table.astype(np.float32)


class Generator:
    """Samples images from an exported model folder (see docs/architecture.md, "Exported model folder").

    Args:
        path (str | Path): a folder written by `dnd-export` (or, with the TensorRT backend, `dnd-build`).
        backend (str): "auto" (TensorRT, then ONNX Runtime CUDA, then ONNX Runtime CPU),
            "tensorrt", "onnxruntime-cuda" or "onnxruntime-cpu".
        threads (Optional[int]): CPU threads per ONNX Runtime session; None uses every core.
        max_batch (Optional[int]): rows per backend call, shared by all concurrent requests (guidance
            takes two per image); None: the backend's limit, else 64.
        max_queue (int): requests that may wait for a row; one more raises OverloadedError.

    Raises:
        ManifestError: not a model folder, or a file does not match its sha256 in manifest.json.
        BackendUnavailableError: the requested backend cannot run here.
    """

    def __init__(self, path: str | os.PathLike, backend: str = "auto", *, threads: Optional[int] = None,
                 max_batch: Optional[int] = None, max_queue: int = 1024) -> None:
        self.path = Path(path)
        # each file is checked against its sha256 as it is read (embeddings here, graphs by the backend)
        self.manifest = m = load_manifest(self.path, verify=False)
        tok, cls = load_embeddings(m)
        self.tok_embeddings = _float32_table(tok)  # [V, d]
        self.cls_embedding = _float32_table(cls)   # [num_classes (+1 null), d]
        self.facts = ModelFacts.of(m)  # what resolving a request needs: labels, sampler defaults, limits
        self.labels = list(self.facts.labels)
        self.num_classes = self.facts.num_classes
        self.vocab_size = self.facts.limits.vocab_size
        self.latent_shape = (int(m.latent["h"]), int(m.latent["w"]), m.depth)
        limit = None if max_batch is None else integer(max_batch, "max_batch", 1)
        max_queue = integer(max_queue, "max_queue", 1)
        self.backend = open_backend(self.path, m, backend, threads)
        if limit is not None and self.backend.max_batch is not None and limit > self.backend.max_batch:
            self.backend.close()
            raise InvalidInputError(f"{arg('max_batch')} {limit} exceeds the {self.backend.max_batch} rows "
                                    f"{self.backend.name} was built for")
        tables = Embeddings(self.tok_embeddings, self.cls_embedding, m.null_class)
        self.scheduler = Scheduler(self.backend, tables, self.latent_shape, limit or self.backend.max_batch or DEFAULT_ROWS,
                                   max_queue)
        # a Generator dropped without close() still stops its thread and releases its backend
        self._finalizer = weakref.finalize(self, self.scheduler.close)
        self._finalizer.atexit = False  # at exit the daemon thread simply ends; joining it could wait on a decode
        log.info("dnd_sdk.Generator: %s runs on %s", self.path, self.backend.name)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def __repr__(self) -> str:
        image = self.manifest.image
        return (f"Generator({str(self.path)!r}, backend={self.backend_name!r}, labels={self.num_classes}, "
                f"image={image['height']}x{image['width']})")

    def close(self) -> None:
        """Stop the scheduler (unfinished calls get CancelledError) and release the backend."""
        self._finalizer()

    def __enter__(self) -> "Generator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def request(self, labels: Any = None, num: Optional[int] = None, *, seed: int = 0,
                cfg_scale: Optional[float] = None, temperature: Optional[float] = None, top_k: Optional[int] = None,
                top_p: Optional[float] = None, head_temperatures: Optional[Sequence[float]] = None,
                sampling: Optional[SamplingParams] = None, batch_size: Optional[int] = None, image_indices: Any = None,
                start: int = 0) -> Request:
        """Validate a sampling request before any work; arguments as in `sample`.

        Raises:
            InvalidInputError: naming the first bad argument and what to pass instead.
        """
        sampling = chosen_sampling(sampling, settings_in(locals()))
        return self.fit(resolve_request(self.facts, labels, num, seed=seed, sampling=sampling,
                                        image_indices=image_indices, start=start, batch_size=batch_size))

    def fit(self, request: Request) -> Request:
        """`request` (see `dnd_sdk.requests.resolve_request`) with its batch size set and checked against the
        rows one call of this Generator holds: a batch size of None becomes as many images as fit.

        Raises:
            InvalidInputError: its images need more rows per call than this Generator's backend takes.
        """
        return dataclasses.replace(request, batch_size=self._batch_size(request))

    def _batch_size(self, request: Request) -> int:
        params = request.params
        per_image = 2 if params.guided else 1
        limit, limited_by = self.scheduler.max_rows, f"{arg('max_batch')} allows"
        if self.backend.max_batch is not None and self.backend.max_batch < limit:
            limit, limited_by = self.backend.max_batch, f"{self.backend_name} was built for"
        if params.guided and limit < 2:  # no batch_size helps: say what does
            more = f"{arg('max_batch')} >= 2" if (self.backend.max_batch or 2) >= 2 else "engines built for 2 rows or more"
            raise InvalidInputError(f"guidance (a {arg('cfg_scale')} other than 1) needs 2 rows per image, but "
                                    f"{limited_by} at most 1; use {arg('cfg_scale')} 1, or {more}")
        # the default: as many as one call of the scheduler holds
        batch_size = request.batch_size or max(1, self.scheduler.max_rows // per_image)
        rows = min(batch_size, len(request.labels)) * per_image
        if rows > limit:
            raise InvalidInputError(
                f"{arg('batch_size')} {batch_size} needs {rows} rows{' (guidance doubles them)' if params.guided else ''}, "
                f"but {limited_by} at most {limit}; use {arg('batch_size')} <= {limit // per_image}")
        return batch_size

    def submit(self, request: Request, images: bool = True, progress: Optional[Progress] = None) -> Future:
        """Queue a validated `request` (see `request`) without waiting. Returns a concurrent.futures.Future
        of its list of PIL images (with images=False, of its codes [n, h, w, D]); cancel() drops its work.

        progress, when given, is called on the scheduler thread after every step in which one of the
        request's images advanced, as progress(j, codes): j the image's place in the request, codes a copy
        of its codes sampled so far, int64 [positions done, D] (positions in row-major order of the h x w
        grid). It holds up every image in flight while it runs, so it should be quick; if it raises, the
        request fails with that error.

        Raises:
            OverloadedError: max_queue requests are waiting already; nothing was queued.
        """
        batch_size = self._batch_size(request)  # a request resolved without this Generator gets its own here
        h, w, depth = self.latent_shape
        codes = np.zeros((len(request.labels), h * w, depth), np.int64)
        return self.scheduler.submit(SampleWork(Future(), request.labels, request.indices, request.seed, request.params,
                                                batch_size, images, codes, progress))

    def sample_codes(self, labels: Any = None, num: Optional[int] = None, *, seed: int = 0,
                     cfg_scale: Optional[float] = None, temperature: Optional[float] = None, top_k: Optional[int] = None,
                     top_p: Optional[float] = None, head_temperatures: Optional[Sequence[float]] = None,
                     timeout: Optional[float] = None, sampling: Optional[SamplingParams] = None,
                     batch_size: Optional[int] = None, image_indices: Any = None, start: int = 0) -> np.ndarray:
        """Sample latent codes; arguments as in `sample`. Returns int64 [n, h, w, D]."""
        timeout = seconds(timeout)
        request = self.request(labels, num, seed=seed, sampling=chosen_sampling(sampling, settings_in(locals())),
                               batch_size=batch_size, image_indices=image_indices, start=start)
        return _wait(self.submit(request, images=False), timeout)

    def sample(self, labels: Any = None, num: Optional[int] = None, *, seed: int = 0,
               cfg_scale: Optional[float] = None, temperature: Optional[float] = None, top_k: Optional[int] = None,
               top_p: Optional[float] = None, head_temperatures: Optional[Sequence[float]] = None,
               timeout: Optional[float] = None, sampling: Optional[SamplingParams] = None,
               batch_size: Optional[int] = None, image_indices: Any = None, start: int = 0) -> list:
        """Sample images.

        Image j of the request is fully determined by (model, its class, the sampling parameters,
        seed, its image index): never by batch size, backend or which other images share the call.

        Args:
            labels: None (image index i gets class i % num_classes), one class (name or id) for all
                images, or a sequence of them (image j gets labels[j % len(labels)]). A string of
                digits that is not a label name is read as a class id.
            num (int): how many images; default len(image_indices), else len(labels) (1 for a single
                label), else num_classes.
            seed (int): request seed >= 0 (default 0).
            cfg_scale, temperature, top_k, top_p: sampling settings; None takes the manifest's
                sampler_defaults. cfg_scale 1 turns guidance off; temperature 0 is greedy.
            head_temperatures (Optional[list[float]]): one temperature per depth, overriding temperature.
            sampling (Optional[SamplingParams]): the settings as one object, instead of single ones; those
                it leaves None take the manifest's sampler_defaults.
            batch_size (Optional[int]): at most this many of the request's images in one backend call
                (guidance runs 2x rows in the same call); other requests' images may fill the call's
                other rows. None: as many as a call holds (max_batch rows).
            image_indices (Optional[list[int]]): the image index of each image (default start + j).
            start (int): first image index, when image_indices is not given.
            timeout (Optional[float]): seconds to wait; then the request is dropped and
                RequestTimeoutError raised.

        Returns:
            list[PIL.Image.Image]: RGB images.

        Raises:
            InvalidInputError, OverloadedError, RequestTimeoutError.
        """
        timeout = seconds(timeout)
        request = self.request(labels, num, seed=seed, sampling=chosen_sampling(sampling, settings_in(locals())),
                               batch_size=batch_size, image_indices=image_indices, start=start)
        return _wait(self.submit(request), timeout)

    def check_codes(self, codes: Any) -> np.ndarray:
        """codes -> int64 [n, h, w, D] with every value in [0, vocab_size), or InvalidInputError."""
        shape = ", ".join(map(str, self.latent_shape))
        try:
            arr = np.asarray(codes)
        except (ValueError, TypeError, OverflowError):  # ragged nested lists, say
            raise InvalidInputError(f"codes must be an integer array of shape [n, {shape}], got {shown(codes)}",
                                    ["codes"]) from None
        if arr.dtype.kind not in "iu":
            raise InvalidInputError(f"codes must be an integer array, got dtype {arr.dtype}", ["codes"])
        if arr.ndim != 4 or arr.shape[1:] != self.latent_shape or arr.shape[0] < 1:
            raise InvalidInputError(f"codes must have shape [n >= 1, {shape}] "
                                    f"(n, h, w, depth), got {list(arr.shape)}")
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            raise InvalidInputError(f"codes must lie in [0, {self.vocab_size}), got values in [{arr.min()}, {arr.max()}]")
        return arr.astype(np.int64)

    def decode(self, codes: Any, batch_size: int = 16, *, timeout: Optional[float] = None) -> list:
        """Decode codes [n, h, w, D] (any integer dtype) into n RGB PIL images."""
        codes, timeout = self.check_codes(codes), seconds(timeout)
        batch_size = min(integer(batch_size, "batch_size", 1), self.backend.max_batch or batch_size)
        return _wait(self.scheduler.submit(DecodeWork(Future(), codes, batch_size)), timeout)


def _wait(future: Future, timeout: Optional[float]) -> Any:
    try:
        return future.result(timeout)
    except KeyboardInterrupt:  # nobody waits for the result any more: free the request's rows
        future.cancel()
        raise
    except FutureTimeout:
        if not future.cancel():  # it finished in the meantime
            return future.result()
        raise RequestTimeoutError(f"the request did not finish within its timeout of {timeout} s; it was dropped. "
                                  f"Retry with a longer {arg('timeout')}, or when the Generator is less busy") from None
