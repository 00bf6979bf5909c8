"""The floor of a `dnd bench` result: the least time per image that this run's measured rates allow.

Two rates are measured in the runtime being benchmarked (ONNX Runtime on the CPU, with the bench's
threads and the runtime's session options), each from a graph of float32 MatMuls built here:
- the weight-streaming rate (bytes/s): one row times a 256 MB weight, far larger than any cache, so the
  product reads every weight byte from memory once. It is the bandwidth for every dtype: bytes are bytes.
- the compute rate (FLOP/s) at R rows: R rows through a chain of CHAIN products by one [256, 256]
  weight, which stays in cache, so memory does not limit it.

Per image, at a batch of B images (R = B rows, 2B with guidance):
- stages: max(positions x stage weight bytes / B / streaming rate, transformer FLOPs / compute rate at R):
  one stage call per position streams the stage graphs once for all rows of the batch;
- decoder: decoder FLOPs / compute rate at DECODER_ROWS (its convolutions are GEMMs over every pixel);
- the floor is their sum; sampling, which moves no weights, is left out.
docs/architecture.md (Benchmarking) defines it for readers of the JSON.
"""
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from dnd_sdk.errors import ManifestError
from dnd_sdk.model_folder.manifest import Manifest
from dnd_training.config import stored_config
from dnd_training.model import ModelArgs
from .profile import fed_positions, stage_parameters, transformer_gflop

STREAMED_MB = 256  # far above the last-level cache a single core reads from
CACHED_WIDTH = 256  # a [256, 256] float32 weight: 256 kB, inside the L2 of current x86 cores
CHAIN = 32  # MatMuls per compute run: the call's own overhead spread over many products
DECODER_ROWS = 256  # the decoder's convolutions have a row per pixel: it meets the rate of many rows
REPEATS = 5


def _declared_outside(w: np.ndarray) -> TensorProto:
    """The initializer "w" with w's shape and its bytes outside the graph: the session takes them from w's own
    memory, so a 256 MB weight is not copied through protobuf."""
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=w.shape, data_location=TensorProto.EXTERNAL)
    tensor.external_data.add(key="location", value="w")  # a name only: the bytes come with the session options
    return tensor


def matmul_session(w: np.ndarray, links: int, threads: int) -> Callable[[np.ndarray], object]:
    """run(x): x [rows, k] through `links` MatMuls by the constant weight w [k, k or any], which ONNX Runtime
    packs once at load, as it does the stage graphs' weights; the session options are the runtime's
    (`dnd_sdk.backends.onnxrt.session_from_onnx`), plus w."""
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"y{i}", "w"], [f"y{i + 1}"]) for i in range(links)]
    graph = helper.make_graph(
        nodes, "matmul_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", w.shape[0]])],
        [helper.make_tensor_value_info(f"y{links}", TensorProto.FLOAT, ["rows", w.shape[1]])],
        [_declared_outside(w)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # read by every ONNX Runtime this package supports
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_external_initializers(["w"], [ort.OrtValue.ortvalue_from_numpy(w)])
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})


def _best_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: the session's arenas and first-call allocations
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def streaming_bytes_per_s(threads: int, megabytes: int = STREAMED_MB, repeats: int = 2 * REPEATS) -> float:
    """Bytes/s of a one-row float32 MatMul over a `megabytes` weight: the rate weights stream from memory.
    A run takes some 15 ms, so twice the runs cost little and their best is less at the mercy of a busy host."""
    width = 4096
    w = np.full((width, megabytes * (1 << 20) // 4 // width), 0.5, np.float32)
    x = np.ones((1, width), np.float32)
    run = matmul_session(w, 1, threads)
    return w.nbytes / _best_seconds(lambda: run(x), repeats)


def compute_flop_per_s(threads: int, rows: int, repeats: int = REPEATS) -> float:
    """FLOP/s of `rows` float32 rows through CHAIN products with a cached [CACHED_WIDTH, CACHED_WIDTH] weight."""
    rng = np.random.default_rng(0)
    # scaled so that every link keeps the rows' size: no overflow, no denormals to slow the products
    w = (rng.standard_normal((CACHED_WIDTH, CACHED_WIDTH)) / np.sqrt(CACHED_WIDTH)).astype(np.float32)
    x = rng.standard_normal((rows, CACHED_WIDTH)).astype(np.float32)
    run = matmul_session(w, CHAIN, threads)
    flop = 2 * rows * CACHED_WIDTH * CACHED_WIDTH * CHAIN
    return flop / _best_seconds(lambda: run(x), repeats)


@dataclass
class Rates:
    """This run's measured rates: bytes/s of streamed weights, FLOP/s of cached GEMMs by row count."""
    bytes_per_s: float
    flop_per_s: dict  # rows -> FLOP/s

    @classmethod
    def measure(cls, threads: int, rows: list) -> "Rates":
        return cls(streaming_bytes_per_s(threads),
                   {r: compute_flop_per_s(threads, r) for r in sorted({*rows, DECODER_ROWS})})

    def as_dict(self) -> dict:
        return {"streaming_gb_per_s": round(self.bytes_per_s / 1e9, 2),
                "compute_gflops_per_s": {str(r): round(f / 1e9, 2) for r, f in self.flop_per_s.items()}}


def stage_weight_bytes(manifest: Manifest) -> int:
    """Bytes of every stage graph in the folder, its external data included: what one position streams,
    in the folder's own dtype (quantized weights, scales and all)."""
    entries = [manifest.files[name] for name in manifest.stage_names]
    return sum(entry.bytes + sum(ref.bytes for ref in entry.external_data) for entry in entries)


def _dims(value_info: onnx.ValueInfoProto) -> Optional[list]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims] or None


# multiply-adds per output element: the weight's reduction dims. Conv weights are [out, in/groups, kh, kw];
# QLinearConv's weight is its input 3; MatMul and Gemm reduce over the first input's last dim
_WEIGHT_INPUT = {"Conv": 1, "QLinearConv": 3}


def decoder_graph_gflop(manifest: Manifest) -> Optional[float]:
    """GFLOP of decoding one image, counted from the decoder graph's shapes: every Conv, QLinearConv, MatMul
    and Gemm's output elements times its reduction length. None when a shape stays unknown."""
    model = onnx.load(str(manifest.graph_path("decoder")), load_external_data=False)
    for value in model.graph.input:  # one image: then data propagation resolves the shapes Reshape computes
        value.type.tensor_type.shape.dim[0].dim_value = 1
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {v.name: _dims(v) for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    macs = 0
    for node in model.graph.node:
        if node.op_type in _WEIGHT_INPUT:
            reduction = (shapes.get(node.input[_WEIGHT_INPUT[node.op_type]]) or [None])[1:]
        elif node.op_type in ("MatMul", "Gemm"):
            reduction = (shapes.get(node.input[0]) or [None])[-1:]
        else:
            continue
        output = shapes.get(node.output[0]) or [None]
        if not reduction or None in reduction + output:
            return None
        macs += int(np.prod(output)) * int(np.prod(reduction))
    return 2 * macs / 1e9


@dataclass
class Work:
    """What sampling one image asks of the runtime, whatever the speed: the floor's numerators."""
    positions: int  # stage calls per image, each streaming every stage graph once
    stage_bytes: int  # bytes of all stage graphs
    stage_flop: float  # transformer FLOPs per image, guidance's rows included
    decoder_flop: Optional[float]  # None: not known, left out of the floor


def floor_seconds(work: Work, batch: int, bytes_per_s: float, stage_flop_per_s: float,
                  decoder_flop_per_s: float) -> dict:
    """Seconds per image that the rates allow at `batch` images per call, by part, and which bound rules.

    The stage weights stream once per position for the whole batch; each part takes the larger of its
    bounds; `bound` is that of the larger part ("compute" when the decoder's arithmetic is)."""
    weights = work.positions * work.stage_bytes / batch / bytes_per_s
    stage_compute = work.stage_flop / stage_flop_per_s
    decoder = 0.0 if work.decoder_flop is None else work.decoder_flop / decoder_flop_per_s
    stages = max(weights, stage_compute)
    bound = "weights" if weights >= stage_compute and stages >= decoder else "compute"
    return {"seconds_per_image": stages + decoder, "bound": bound, "stage_weights_s": weights,
            "stage_compute_s": stage_compute, "decoder_compute_s": decoder}


def _model_args(manifest: Manifest) -> ModelArgs:
    """The manifest's model_config as ModelArgs; a ManifestError names what is wrong with it."""
    return stored_config(ModelArgs, manifest.model_config, "model_config", ManifestError, "manifest.json: ")


def model_work(manifest: Manifest, guided: bool, decoder_flop: Optional[float]) -> Work:
    """The folder's work per image: stage bytes from its manifest (right for every dtype), positions and
    transformer FLOPs from its model_config, so that a folder needs no checkpoint for its floor."""
    args = _model_args(manifest)
    return Work(fed_positions(args), stage_weight_bytes(manifest), transformer_gflop(args, guided) * 1e9, decoder_flop)


def fp32_work(manifest: Manifest, work: Work) -> Work:
    """The same work with float32 stage weights: 4 bytes for every stage parameter of model_config."""
    return replace(work, stage_bytes=4 * stage_parameters(_model_args(manifest)))


def _significant(x: float) -> float:
    return float(f"{x:.4g}")


@dataclass
class Floor:
    """A run's floor: its measured rates and the model's work, in its own dtype and in fp32."""
    rates: Rates
    work: Work
    fp32: Work
    decoder_source: str  # where the decoder's FLOPs come from, or why they are left out

    def keys(self, batch: int, rows: int, images_per_s: float) -> dict:
        """A result's floor keys: its floor in images/s, the measured time over the floor's (`of_floor`, 1.0 is
        the limit), the bound that rules it, the fp32 floor of the same model and the floor's parts in seconds
        per image."""
        rate_args = (self.rates.bytes_per_s, self.rates.flop_per_s[rows], self.rates.flop_per_s[DECODER_ROWS])
        floor, fp32_floor = floor_seconds(self.work, batch, *rate_args), floor_seconds(self.fp32, batch, *rate_args)
        seconds = floor["seconds_per_image"]
        return {"floor_images_per_s": round(1 / seconds, 2), "of_floor": round(1 / (images_per_s * seconds), 3),
                "bound": floor["bound"], "fp32_floor_images_per_s": round(1 / fp32_floor["seconds_per_image"], 2),
                "floor_seconds_per_image": {part: _significant(floor[f"{part}_s"])
                                            for part in ("stage_weights", "stage_compute", "decoder_compute")}}

    def report_keys(self) -> dict:
        return {**self.rates.as_dict(), "floor_decoder": self.decoder_source}


# a GPU backend's results: the rates are measured on the CPU, so no floor stands beside them
NO_FLOOR = {"floor_images_per_s": None, "of_floor": None, "bound": None, "fp32_floor_images_per_s": None,
            "floor_seconds_per_image": None}
NO_FLOOR_REPORT = {"streaming_gb_per_s": None, "compute_gflops_per_s": None, "floor_decoder": None,
                   "no_floor": "the floor's rates are measured on the CPU, and this backend runs elsewhere"}
