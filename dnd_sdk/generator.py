"""`Generator`: sample images from an exported model folder with numpy and ONNX Runtime (or TensorRT), no torch.

    gen = Generator("model_dir")                       # backend="auto": TensorRT, ORT CUDA, ORT CPU
    images = gen.sample(labels=["ocean", 3], seed=0)   # list of PIL images
    codes = gen.sample_codes(num=8, seed=0)            # int64 [8, h, w, D], image i of class i % num_classes
    images = gen.decode(codes)

A Generator is safe to share between threads: one scheduler thread owns the backend and runs the
images of all concurrent calls as rows of one batch (`dnd_sdk.scheduler`); every call returns what
it returns alone, bit for bit.
"""
import logging
import math
import os
import weakref
from collections.abc import Callable
from concurrent.futures import Future, TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .arguments import MAX_IMAGES, MAX_INDEX, as_int, integer, integers, seconds, shown
from .backends import open_backend
from .errors import InvalidInputError, RequestTimeoutError, arg
from .model_folder.files import load_embeddings
from .model_folder.manifest import load_manifest
from .sampler import SamplingParams
from .scheduler import Scheduler, Work

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """A validated sampling request: image j has class `labels[j]` and draws its randomness as image `indices[j]`."""
    labels: np.ndarray   # [n] int64 class ids
    indices: np.ndarray  # [n] int64 image indices for the seeding rule
    seed: int
    params: SamplingParams
    batch_size: int


# rows per call where the backend sets no limit. The ONNX Runtime backend's cache is np.zeros, whose pages
# the OS maps only once a row is used: rows never used cost address space, not memory.
DEFAULT_ROWS = 64
QUOTE = "'"  # around a string's repr: a class id given as digits is shown without it


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
        self.labels = [str(x) for x in m.labels]
        self.num_classes = len(self.labels)
        self.vocab_size = int(m.model_config["vocab_size"])
        self.latent_shape = (int(m.latent["h"]), int(m.latent["w"]), m.depth)
        self._label_ids = {name: i for i, name in enumerate(self.labels)}
        limit = None if max_batch is None else integer(max_batch, "max_batch", 1)
        max_queue = integer(max_queue, "max_queue", 1)
        self.backend = open_backend(self.path, m, backend, threads)
        if limit is not None and self.backend.max_batch is not None and limit > self.backend.max_batch:
            self.backend.close()
            raise InvalidInputError(f"{arg('max_batch')} {limit} exceeds the {self.backend.max_batch} rows "
                                    f"{self.backend.name} was built for")
        self.scheduler = Scheduler(self, limit or self.backend.max_batch or DEFAULT_ROWS, max_queue)
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

    def _class_id(self, label: Any) -> int:
        if isinstance(label, str) and label in self._label_ids:
            return self._label_ids[label]
        if isinstance(label, str) and not label.strip().isdecimal():
            known = ", ".join(self.labels[:8]) + (", ..." if self.num_classes > 8 else "")
            raise InvalidInputError(f"unknown label {shown(label)}; this model knows {self.num_classes} labels "
                                    f"({known}) or class ids 0..{self.num_classes - 1}", ["labels"])
        class_id = as_int(label, 0, self.num_classes - 1, digits=True)  # a string of digits is a class id
        if class_id is None:
            is_int = isinstance(label, str) or as_int(label, -math.inf, math.inf) is not None  # of any size
            wrong = (f"class id {shown(label).strip(QUOTE)} is out of range" if is_int
                     else f"each of {arg('labels')} is a class name or an int class id, got {shown(label)}")
            raise InvalidInputError(f"{wrong}; this model has classes 0..{self.num_classes - 1}", ["labels"])
        return class_id

    def _given_labels(self, labels: Any) -> list:
        if isinstance(labels, (str, int, np.integer)):
            given = [labels]
        elif isinstance(labels, (list, tuple, range, np.ndarray)):
            given = list(np.asarray(labels).ravel()) if isinstance(labels, np.ndarray) else list(labels)
        else:
            raise InvalidInputError(f"{arg('labels')} must be a class name, an int class id or a list of them, "
                                    f"got {shown(labels)}")
        if not given or len(given) > MAX_IMAGES:
            raise InvalidInputError(f"{arg('labels')} must hold 1..{MAX_IMAGES:,} class names or ids, got "
                                    f"{len(given)}; or pass None")
        return [self._class_id(x) for x in given]

    def _indices(self, given: Optional[list], num: Any, image_indices: Any, start: Any) -> np.ndarray:
        if image_indices is not None:
            if start is not None and as_int(start) != 0:  # any start but the default
                raise InvalidInputError(f"give {arg('image_indices')} or {arg('start')}, not both")
            indices = integers(image_indices, "image_indices")
            if num is not None and len(indices) != integer(num, "num", 1, MAX_IMAGES):
                raise InvalidInputError(f"{arg('num')}={num} but {len(indices)} {arg('image_indices')} were given")
            return indices
        if num is None:
            num = self.num_classes if given is None else len(given)  # default: one image per class or label
        num = integer(num, "num", 1, MAX_IMAGES)
        return np.arange(num, dtype=np.int64) + integer(start, "start", 0, MAX_INDEX - num)

    def request(self, labels: Any = None, num: Optional[int] = None, *, seed: int = 0,
                sampling: Optional[SamplingParams] = None, batch_size: Optional[int] = None, image_indices: Any = None,
                start: int = 0, **settings: Any) -> Request:
        """Validate a sampling request before any work; arguments as in `sample`.

        Raises:
            InvalidInputError: naming the first bad argument and what to pass instead.
        """
        given = None if labels is None else self._given_labels(labels)
        indices = self._indices(given, num, image_indices, start)
        # no labels: image index i gets class i % num_classes; else image j gets given[j % len(given)]
        if given is None:
            ids = indices % self.num_classes
        else:
            ids = np.array([given[j % len(given)] for j in range(len(indices))])
        params = self._params(sampling, settings)
        per_image = 2 if params.guided else 1
        if batch_size is None:  # as many as one call of the scheduler holds
            batch_size = max(1, self.scheduler.max_rows // per_image)
        batch_size = integer(batch_size, "batch_size", 1, MAX_IMAGES)
        rows = min(batch_size, len(ids)) * per_image
        limit, limited_by = self.scheduler.max_rows, f"{arg('max_batch')} allows"
        if self.backend.max_batch is not None and self.backend.max_batch < limit:
            limit, limited_by = self.backend.max_batch, f"{self.backend_name} was built for"
        if params.guided and limit < 2:  # no batch_size helps: say what does
            more = f"{arg('max_batch')} >= 2" if (self.backend.max_batch or 2) >= 2 else "engines built for 2 rows or more"
            raise InvalidInputError(f"guidance (a {arg('cfg_scale')} other than 1) needs 2 rows per image, but "
                                    f"{limited_by} at most 1; use {arg('cfg_scale')} 1, or {more}")
        if rows > limit:
            raise InvalidInputError(
                f"{arg('batch_size')} {batch_size} needs {rows} rows{' (guidance doubles them)' if params.guided else ''}, "
                f"but {limited_by} at most {limit}; use {arg('batch_size')} <= {limit // per_image}")
        return Request(ids.astype(np.int64), indices.astype(np.int64), integer(seed, "seed"), params, batch_size)

    def _params(self, sampling: Optional[SamplingParams], settings: dict) -> SamplingParams:
        """`sampling` (a SamplingParams, taken whole) or the given `settings`, the rest from the manifest's defaults."""
        if sampling is not None and (settings or not isinstance(sampling, SamplingParams)):
            raise InvalidInputError(f"give {arg('sampling')} (a SamplingParams) or single settings such as cfg_scale=2, "
                                    "not both")
        if sampling is None:
            fields = set(SamplingParams.__dataclass_fields__)
            unknown = sorted(set(settings) - fields)
            if unknown:
                raise InvalidInputError(f"unknown sampling setting(s) {unknown}; the settings are {sorted(fields)}",
                                        unknown)
            given = {k: v for k, v in settings.items() if v is not None}
            sampling = SamplingParams(**{**self.manifest.sampler_defaults, **given})
        return sampling.validate(self.vocab_size, self.latent_shape[2], self.manifest.null_class is not None)

    def submit(self, request: Request, images: bool = True,
               progress: Optional[Callable[[int, np.ndarray], Any]] = None) -> Future:
        """Queue a validated `request` (see `request`) without waiting. Returns a concurrent.futures.Future
        of its list of PIL images (with images=False, of its codes [n, h, w, D]); cancel() drops its work.
        `progress(j, codes)`, if given, is called on the scheduler thread after each step that advanced
        image j of the request, with a copy of its codes so far, int64 [positions done, D]; it must return
        quickly (hand any real work to another thread), as every request waits for it.

        Raises:
            OverloadedError: max_queue requests are waiting already; nothing was queued.
        """
        h, w, depth = self.latent_shape
        codes = np.zeros((len(request.labels), h * w, depth), np.int64)
        return self.scheduler.submit(Work(Future(), request.labels, request.indices, request.seed, request.params,
                                          request.batch_size, images, codes, progress=progress))

    def sample_codes(self, labels: Any = None, num: Optional[int] = None, *, timeout: Optional[float] = None,
                     **kwargs: Any) -> np.ndarray:
        """Sample latent codes; arguments as in `sample`. Returns int64 [n, h, w, D]."""
        timeout = seconds(timeout)
        return _wait(self.submit(self.request(labels, num, **kwargs), images=False), timeout)

    def sample(self, labels: Any = None, num: Optional[int] = None, *, timeout: Optional[float] = None,
               **kwargs: Any) -> list:
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
            sampling (Optional[SamplingParams]): all sampler settings at once; or give single ones:
            cfg_scale, temperature, top_k, top_p: sampling settings; None takes the manifest's
                sampler_defaults. cfg_scale 1 turns guidance off; temperature 0 is greedy.
            head_temperatures (Optional[list[float]]): one temperature per depth, overriding temperature.
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
        return _wait(self.submit(self.request(labels, num, **kwargs)), timeout)

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
        return _wait(self.scheduler.submit(Work(Future(), batch_size=batch_size, codes=codes)), timeout)


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
