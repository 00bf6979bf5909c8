"""dnd_engines: TensorRT engines built from an exported model folder (`dnd-build`).

Depends on dnd_sdk (manifest) only; tensorrt and polygraphy are imported where used.
"""
