"""Typed errors. Every message says what was wrong and what to do about it."""


class DndError(Exception):
    """Base of every error this SDK raises on purpose; the CLI prints its message only."""


class InvalidInputError(DndError, ValueError):
    """An argument or input array is invalid (bad label, temperature, dtype...)."""


class ManifestError(DndError):
    """A model folder is missing, malformed, or its files do not match manifest.json."""


class CheckpointError(DndError):
    """A checkpoint.pt is missing, truncated, of the wrong format, or inconsistent."""


class BackendUnavailableError(DndError):
    """The requested backend (TensorRT, ONNX Runtime CUDA...) cannot run here."""


class ClusterError(DndError):
    """A Ray run cannot start or go on: ray is not installed, the cluster is unreachable or too small,
    or its workers keep dying."""
