"""Typed errors. Every message says what was wrong and what to do about it."""
import re
from collections.abc import Iterable

# Marks an argument name inside a message (see `arg`). A control character: no path, label or prose has it.
ARG_MARK = "\x1f"
_MARKED = re.compile(f"{ARG_MARK}([A-Za-z_][A-Za-z0-9_]*){ARG_MARK}")


def arg(name: str) -> str:
    """`name` marked as a Python argument name in an error message: `str(error)` shows it as it is
    (`per_class`), a command line shows its own flag in its place (`--per-class`). Only marked names are
    rewritten, so a path or a sentence that contains the same word is quoted as it was given."""
    return f"{ARG_MARK}{name}{ARG_MARK}"


def marked_names(message: str) -> list:
    return _MARKED.findall(message)


class DndError(Exception):
    """Base of every error this SDK raises on purpose; the CLI prints its message only.

    Argument names in the message are marked with `arg(name)`, so that a command line can show its
    own flags instead (`num` -> `--num`; see dnd_sdk.cli.flags). `names` lists the marked names,
    plus any given explicitly.
    """

    def __init__(self, message: str = "", names: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.names = tuple(dict.fromkeys([*names, *marked_names(message)]))

    @property
    def marked_message(self) -> str:
        """The message with its argument names still marked (for dnd_sdk.cli.flags)."""
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return self.marked_message.replace(ARG_MARK, "")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


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
