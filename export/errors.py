"""Errors of the export step; both are DndErrors, so the CLIs print the message only."""
from dnd_sdk.errors import DndError


class ExportError(DndError):
    """Writing the exported folder failed (disk full, permission...); nothing was left behind."""


class ExportCheckError(ExportError):
    """--check found the ONNX graphs further from the PyTorch model than the tolerance allows."""
