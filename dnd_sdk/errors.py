"""Typed errors. Every message says what was wrong and what to do about it."""
from collections.abc import Iterable


class DndError(Exception):
    """Base of every error this SDK raises on purpose; the CLI prints its message only.

    `names` lists the Python argument names the message mentions, so that a command line can
    show its own flags instead (`num` -> `--num`); see dnd_sdk.cli.flags.
    """

    def __init__(self, message: str = "", names: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.names = tuple(names)


class InvalidInputError(DndError, ValueError):
    """An argument or input array is invalid (bad label, temperature, dtype...)."""


class ManifestError(DndError):
    """A model folder is missing, malformed, or its files do not match manifest.json."""


class CheckpointError(DndError):
    """A checkpoint.pt is missing, truncated, of the wrong format, or inconsistent."""


class BackendUnavailableError(DndError):
    """The requested backend (TensorRT, ONNX Runtime CUDA...) cannot run here."""


class OutputError(DndError):
    """Writing results failed (disk full, read-only folder...); what is on disk stays consistent."""


class ClusterError(DndError):
    """A Ray run cannot start or go on: ray is not installed, the cluster is unreachable or too small,
    or its workers keep dying."""


class OverloadedError(DndError):
    """A Generator's queue of waiting requests is full: try again later (HTTP 429)."""


class RequestTimeoutError(DndError, TimeoutError):
    """A request did not finish within its timeout; its work was dropped (HTTP 504)."""


class CancelledError(DndError):
    """A request was cancelled, or its Generator closed, before it finished."""
