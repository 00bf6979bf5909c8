"""The external-data files an ONNX model reads, found by walking its protobuf wire format.

    onnx_external_files(model_bytes) -> {"stage0.onnx.data", ...}

The runtime must know every file a graph will open before ONNX Runtime opens it, without
the onnx package. Only the fields that can hold a tensor are followed (field numbers from
onnx.proto); raw weights are skipped by length, never copied.
"""
from collections.abc import Iterator

# message -> {field number: message type of that field}; TensorProto is handled by _tensor
_MESSAGES = {
    "model": {7: "graph", 25: "function"},                  # ModelProto.graph, .functions
    "function": {7: "node"},                                 # FunctionProto.node
    "graph": {1: "node", 5: "tensor", 15: "sparse"},         # GraphProto.node, .initializer, .sparse_initializer
    "node": {5: "attribute"},                                # NodeProto.attribute
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},                    # SparseTensorProto.values, .indices
}
_TENSOR_EXTERNAL_DATA, _ENTRY_KEY, _ENTRY_VALUE = 13, 1, 2
_MAX_NESTING = 64  # subgraphs (If/Loop bodies) nest; a hostile file must not exhaust the stack


class WireFormatError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: memoryview, pos: int) -> tuple:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireFormatError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _fields(buf: memoryview) -> Iterator[tuple]:
    """(field number, wire type, value) of one message; value is a memoryview for length-delimited fields."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            value, pos = None, pos + (8 if wire == 1 else 4)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise WireFormatError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise WireFormatError("field runs past the end of the message")
        yield number, wire, value


def _tensor(buf: memoryview, found: set) -> None:
    for number, wire, value in _fields(buf):
        if number == _TENSOR_EXTERNAL_DATA and wire == 2:
            entry = {n: bytes(v).decode("utf-8", "replace") for n, w, v in _fields(value) if w == 2}
            if entry.get(_ENTRY_KEY) == "location":
                found.add(entry.get(_ENTRY_VALUE, ""))


def _walk(buf: memoryview, kind: str, found: set, depth: int) -> None:
    if depth > _MAX_NESTING:
        raise WireFormatError(f"subgraphs nested deeper than {_MAX_NESTING}")
    children = _MESSAGES[kind]
    for number, wire, value in _fields(buf):
        child = children.get(number)
        if child is None or wire != 2:
            continue
        if child == "tensor":
            _tensor(value, found)
        else:
            _walk(value, child, found, depth + 1)


def onnx_external_files(model: bytes) -> set:
    """Every external-data `location` in a serialized ModelProto. Raises WireFormatError if malformed."""
    found: set = set()
    _walk(memoryview(model), "model", found, 0)
    return found
