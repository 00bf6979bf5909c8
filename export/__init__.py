"""dnd_export: checkpoint.pt -> ONNX stage graphs, decoder graph, embeddings and manifest.

    dnd-export runs/words/checkpoint.pt -o out/model [--dtype fp16] [--check]

    from dnd_export import export_model
    export_model("runs/words/checkpoint.pt", "out/model", dtype="fp32", check=True)
"""
from .errors import ExportCheckError, ExportError
from .export import export_model

__all__ = ["export_model", "ExportError", "ExportCheckError"]
