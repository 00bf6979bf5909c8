"""Backends, in the order `backend="auto"` tries them: `BACKENDS` is the one list of their names. Each entry
(`spec.BackendSpec`) says which folders it runs without importing its engine, whose module is imported only
when the backend is opened, so TensorRT (dnd_sdk/backends/tensorrt.py) costs nothing where it is absent.

A new backend is a module of its own here (its `Backend`), a `<name>_spec.py` beside it (its `BackendSpec`:
name, runner, `supports`), one entry below, and an extra in setup.py for the package it wraps.
"""
import logging
from pathlib import Path
from typing import Optional

from ..arguments import integer
from ..errors import BackendUnavailableError, InvalidInputError
from ..model_folder.graphs import GraphFacts
from ..model_folder.manifest import Manifest
from .base import Backend
from .onnxrt_spec import OnnxruntimeSpec
from .spec import BackendSpec
from .tensorrt_spec import TensorrtSpec

log = logging.getLogger(__name__)

# "auto" walks this list top to bottom
BACKENDS: tuple[BackendSpec, ...] = (TensorrtSpec(), OnnxruntimeSpec("cuda"), OnnxruntimeSpec("cpu"))
BACKEND_CHOICES = ("auto", *(spec.name for spec in BACKENDS))
MAX_THREADS = 1024  # threads per session: far beyond any machine's cores


def refusals(graphs: GraphFacts) -> dict[str, Optional[str]]:
    """Each backend's answer for a folder of these graphs, in BACKENDS' order: None where it runs them, else why
    not. Nothing is imported or opened: what is installed here is found out by opening."""
    return {spec.name: spec.supports(graphs) for spec in BACKENDS}


def runnable(graphs: GraphFacts) -> list[str]:
    """The names of the backends that run a folder of these graphs, in BACKENDS' order."""
    return [name for name, refusal in refusals(graphs).items() if refusal is None]


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
    for spec in (s for s in BACKENDS if backend in ("auto", s.name)):
        refusal = spec.supports(manifest.graphs)  # e.g. int8 graphs use ONNX Runtime's own operators
        if refusal is not None:
            reasons.append(f"{spec.name}: {refusal}")
            log.info("backend %s skipped: %s", spec.name, reasons[-1])
            continue
        try:
            return spec.open(model_dir, manifest, threads)
        except ImportError as e:  # the backend module or the package it wraps is not installed
            reasons.append(f"{spec.name}: {e}")
        except BackendUnavailableError as e:
            reasons.append(f"{spec.name}: {e}")
        log.info("backend %s skipped: %s", spec.name, reasons[-1])
    raise BackendUnavailableError(f"no backend can run {model_dir} here. " + " | ".join(reasons))
