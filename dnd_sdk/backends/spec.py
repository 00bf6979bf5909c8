"""A backend as `backend="auto"`, `dnd info`, `dnd-export` and `dnd-build` see it before it is imported: its name,
whether it would run a folder's graphs, and where its code lives. A backend's own module imports its engine
(onnxruntime, tensorrt) at the top, so the answer to "would you run this folder?" lives in a module of its own
beside it that imports nothing heavy: `<backend>_spec.py`, listed in `dnd_sdk.backends.BACKENDS`.
"""
import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Optional

from ..model_folder.graphs import GraphFacts
from ..model_folder.manifest import Manifest
from .base import Backend


class BackendSpec(ABC):
    """One entry of the backend list.

    Attributes:
        name (str): what `Generator(backend=...)` takes and `Backend.name` reports, e.g. "onnxruntime-cpu".
        runner (str): "module:Class" of its `Backend`, imported only when the backend is opened.
    """
    name: str
    runner: str

    @abstractmethod
    def supports(self, graphs: GraphFacts) -> Optional[str]:
        """None when this backend runs graphs of this kind on this machine, else the reason it cannot, in words
        a user can act on. It imports nothing heavy: `dnd info` and `dnd-export` ask every backend."""

    def options(self) -> dict[str, Any]:
        """Keyword arguments of the runner beyond model_dir, manifest and threads."""
        return {}

    def open(self, model_dir: str | Path, manifest: Manifest, threads: Optional[int]) -> Backend:
        """The runner on `model_dir`. Raises ImportError where its package is not installed, and
        BackendUnavailableError where it cannot run here."""
        module, _, attr = self.runner.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        backend: Backend = cls(model_dir, manifest, threads=threads, **self.options())
        return backend
