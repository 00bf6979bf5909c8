"""Write one ONNX graph from a wrapper module and describe its I/O for the manifest.

    specs_in, specs_out, extra_files = export_graph(wrapper, args, out_dir / "stage0.onnx",
                                                    inputs, outputs, dynamic_axes, opset=17)
"""
import shutil
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from dnd_sdk.folders import usual_mode
from dnd_sdk.model_folder.manifest import DIM_NAMES, TensorSpec

# protobuf cannot serialise a message past 2 GiB; stay clear of it with the graph structure on top
EXTERNAL_DATA_THRESHOLD = 2_000_000_000
ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
               onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.INT64: "int64",
               onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.BOOL: "bool"}


def export_graph(module, args, path: Path, input_names, output_names, dynamic_axes, opset: int,
                 external_threshold: int = EXTERNAL_DATA_THRESHOLD) -> tuple:
    """Export `module(*args)` to `path`; returns (input specs, output specs, external data file names)."""
    path = Path(path)
    # the exporter spills weights of big models as one file per tensor; export into a scratch
    # folder, then save once in the layout we want (all weights in one file beside the graph)
    scratch = Path(tempfile.mkdtemp(prefix=".scratch-", dir=path.parent))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(module, args, str(scratch / path.name), dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
            traced = module(*args)
        # the graph without the spilled weights: they are copied over one tensor at a time
        model = onnx.load(str(scratch / path.name), load_external_data=False)
        _name_output_dims(model, traced if isinstance(traced, tuple) else (traced,), dynamic_axes)
        extra = _save(model, scratch, path, external_threshold)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    onnx.checker.check_model(str(path), full_check=True)  # by path: works past 2 GB too
    return [_spec(v) for v in model.graph.input], [_spec(v) for v in model.graph.output], extra


def save_graph(model: onnx.ModelProto, path: Path, threshold: int) -> list:
    """Write `model`, held whole in memory, to `path` (replacing it and any external data it had);
    weights over `threshold` bytes go to one `path.data` file. Returns the external file names."""
    data = path.parent / (path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if sum(len(t.raw_data) for t in model.graph.initializer) <= threshold:
        onnx.save_model(model, str(path))
        return []
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    usual_mode(data)  # onnx creates it 0600: another user could not read it
    return [data.name]


def _save(model: onnx.ModelProto, scratch: Path, path: Path, threshold: int) -> list:
    """Write `model` to `path`; weights over `threshold` bytes go to one `path.data` file. Returns the
    external file names. Spilled weights are streamed from the scratch files, never all held at once."""
    spilled = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not spilled:
        return save_graph(model, path, threshold)
    data = path.name + ".data"
    with open(path.parent / data, "wb") as out:
        for tensor in spilled:
            info = {e.key: e.value for e in tensor.external_data}
            with open(scratch / info["location"], "rb") as f:
                f.seek(int(info.get("offset", 0)))
                blob = f.read(int(info["length"])) if "length" in info else f.read()
            offset = out.tell()
            out.write(blob)
            del tensor.external_data[:]
            for key, value in (("location", data), ("offset", str(offset)), ("length", str(len(blob)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    onnx.save_model(model, str(path))
    return [data]


def _name_output_dims(model: onnx.ModelProto, outputs: tuple, dynamic_axes: dict) -> None:
    """Write each output's shape as traced, the dynamic axes by name: the exporter leaves dims made
    by a Reshape unnamed (e.g. "Reshape..._dim_1"), and the manifest wants ints or DIM_NAMES."""
    for value, tensor in zip(model.graph.output, outputs):
        dynamic = dynamic_axes.get(value.name, {})
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for axis, size in enumerate(tensor.shape):
            dim = dims.add()
            if axis in dynamic:
                dim.dim_param = dynamic[axis]
            else:
                dim.dim_value = int(size)


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    t = value.type.tensor_type
    shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
    assert all(isinstance(d, int) or d in DIM_NAMES for d in shape), f"{value.name}: unexpected dims {shape}"
    return TensorSpec(value.name, ONNX_DTYPES[t.elem_type], shape)
