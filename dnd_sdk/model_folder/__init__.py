"""The exported model folder, the runtime's trust boundary: its manifest's schema (`schema`), value checks
(`checks`), reading and writing (`manifest`), the files it names and how they are verified (`files`,
`hashing`, `onnx_refs`) and the TensorRT engines `dnd-build` adds to it (`engine_index`)."""
