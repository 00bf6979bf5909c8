"""Backends, in the order `backend="auto"` tries them. A module is imported only when its entry is tried,
so TensorRT (dnd_sdk/backends/tensorrt.py, `TensorrtBackend`) costs nothing where it is absent."""
import importlib
import logging
from pathlib import Path
from typing import Optional

from ..arguments import integer
from ..errors import BackendUnavailableError, InvalidInputError
from ..model_folder.manifest import Manifest
from .base import Backend

log = logging.getLogger(__name__)

# name -> (module, class, options); "auto" walks this list top to bottom
BACKENDS = {
    "tensorrt": ("dnd_sdk.backends.tensorrt", "TensorrtBackend", {}),
    "onnxruntime-cuda": ("dnd_sdk.backends.onnxrt", "OnnxrtBackend", {"device": "cuda"}),
    "onnxruntime-cpu": ("dnd_sdk.backends.onnxrt", "OnnxrtBackend", {"device": "cpu"}),
}
BACKEND_CHOICES = ("auto", *BACKENDS)
MAX_THREADS = 1024  # threads per session: far beyond any machine's cores


def open_backend(model_dir: str | Path, manifest: Manifest, backend: str = "auto",
                 threads: Optional[int] = None) -> Backend:
    """The first backend that opens `model_dir`: `backend` itself, or under "auto" the first of BACKENDS.

    Raises:
        InvalidInputError: unknown backend name, or threads not None or an int in [0, MAX_THREADS].
        BackendUnavailableError: the named backend (or, under "auto", every backend) cannot run here.
    """
    if backend not in BACKEND_CHOICES:
        raise InvalidInputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    threads = None if threads is None else integer(threads, "threads", 0, MAX_THREADS)
    reasons = []
    for name in (BACKENDS if backend == "auto" else [backend]):
        module, attr, options = BACKENDS[name]
        if name not in manifest.backends:  # e.g. int8 graphs use ONNX Runtime's own operators
            reasons.append(f"{name}: this folder's graphs ({manifest.graph_kinds}) are for "
                           f"{', '.join(manifest.backends)} only")
            log.info("backend %s skipped: %s", name, reasons[-1])
            continue
        try:
            cls = getattr(importlib.import_module(module), attr)
            return cls(model_dir, manifest, threads=threads, **options)
        except ImportError as e:  # the backend module or the package it wraps is not installed
            reasons.append(f"{name}: {e}")
        except BackendUnavailableError as e:
            reasons.append(f"{name}: {e}")
        log.info("backend %s skipped: %s", name, reasons[-1])
    raise BackendUnavailableError(f"no backend can run {model_dir} here. " + " | ".join(reasons))
