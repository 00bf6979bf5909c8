"""The stage MatMul kernels side by side: what each quantized form's weight products cost at a row count.

    python -m dnd_bench.kernels --preset mid --rows 1 --rows 2 --rows 16

One graph per kernel holds the weight MatMuls of a preset's largest stage graph (every block of stage 0
and its head) as independent products of two shared inputs, so a run times the weight products alone,
with nothing else of a stage between them: the part of a stage call that the quantized forms change.
It prints milliseconds per run and the weight bytes over that time, beside the float32 one-row
streaming rate the floor uses (`dnd_bench.floor`). The kernels:

- fp32: MatMul;
- int8: MatMulInteger on rows quantized one by one, as `dnd-export --dtype int8` writes them;
- nbits8, nbits4, nbits4-b16: MatMulNBits at 8 or 4 bits, accuracy level 4 (int8 activations per block),
  blocks of 32 (or 16).

It also says, per kernel, whether a row gets the same bits alone as beside other rows: the runtime
promises an image that does not depend on its batch, so a kernel whose one-row path differs must run a
lone row beside a copy of itself (`dnd_sdk.backends.onnxrt`), and its one-row time does not count.
"""
import time
from dataclasses import dataclass
from typing import Any, cast

import click
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from dnd_training.model import MODEL_CONFIGS, ModelArgs
from .floor import streaming_bytes_per_s


@dataclass(frozen=True)
class Kernel:
    name: str
    bits: int = 0  # MatMulNBits' bits; 0: not MatMulNBits
    block: int = 32


KERNELS = (Kernel("fp32"), Kernel("int8"), Kernel("nbits8", 8), Kernel("nbits4", 4), Kernel("nbits4-b16", 4, 16))


def stage0_shapes(args: ModelArgs) -> list:
    """[(K, N)] of stage 0's weight products: every block up to the first head, then that head."""
    kv_heads = args.n_kv_head or args.n_head
    block = [(args.dim, args.dim + 2 * kv_heads * args.head_dim), (args.dim, args.dim),
             (args.dim, args.ffn_hidden), (args.dim, args.ffn_hidden), (args.ffn_hidden, args.dim)]
    return block * (args.pred_head_positions[0] + 1) + [(args.dim, args.vocab_size)]


def _nbits(w: np.ndarray, bits: int, block: int) -> tuple:
    """(packed uint8 [N, blocks, block * bits / 8], scales [N, blocks]) of w [K, N], symmetric with the
    default zero point."""
    k, n = w.shape
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n), np.float32)
    padded[:k] = w
    values = padded.T.reshape(n, blocks, block)
    top = 2 ** (bits - 1) - 1
    scales = np.maximum(np.abs(values).max(-1), 1e-30) / top
    q = (np.clip(np.round(values / scales[..., None]), -top - 1, top) + 2 ** (bits - 1)).astype(np.uint8)
    if bits == 4:  # two per byte, the first in the low nibble
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return q, scales.astype(np.float32)


def kernel_graph(kernel: Kernel, shapes: list, seed: int = 0) -> onnx.ModelProto:
    """Independent products of inputs x{K} [rows, K] by random weights of `shapes`, in `kernel`'s form."""
    rng = np.random.default_rng(seed)
    inits, nodes, outputs = [], [], []
    for i, (k, n) in enumerate(shapes):
        w = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
        y = f"y{i}"
        if kernel.bits:
            packed, scales = _nbits(w, kernel.bits, kernel.block)
            inits += [numpy_helper.from_array(packed, f"b{i}"), numpy_helper.from_array(scales, f"s{i}")]
            nodes.append(helper.make_node("MatMulNBits", [f"x{k}", f"b{i}", f"s{i}"], [y], domain="com.microsoft",
                                          K=k, N=n, bits=kernel.bits, block_size=kernel.block, accuracy_level=4))
        else:
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [f"x{k}", f"w{i}"], [y]))
        outputs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, ["rows", n]))
    inputs = [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, ["rows", k]) for k in sorted({k for k, _ in shapes})]
    model = helper.make_model(helper.make_graph(nodes, "kernels", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    if kernel.name == "int8":
        from dnd_export.quantize import quantize_rows_int8
        quantize_rows_int8(model)
    return model


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def _feeds(session: ort.InferenceSession, rows: int, rng: np.random.Generator) -> dict:
    return {i.name: rng.standard_normal((rows, i.shape[1])).astype(np.float32) for i in session.get_inputs()}


def _best_ms(session: ort.InferenceSession, feeds: dict, repeats: int, runs: int = 10) -> float:
    session.run(None, feeds)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(runs):
            session.run(None, feeds)
        best = min(best, (time.perf_counter() - t0) / runs)
    return best * 1e3


def _row_alone_is_the_same(session: ort.InferenceSession, rng: np.random.Generator) -> bool:
    """Whether each of three rows (of very different ranges) gets the same outputs alone as in one call."""
    feeds = {k: v * np.array([[1], [30], [0.01]], np.float32) for k, v in _feeds(session, 3, rng).items()}
    together = session.run(None, feeds)
    return all(np.array_equal(a[0], t[r]) for r in range(3)
               for a, t in zip(session.run(None, {k: v[r:r + 1] for k, v in feeds.items()}), together))


def kernel_table(args: ModelArgs, rows: list, threads: int = 1, repeats: int = 3, kernels=KERNELS) -> list:
    """Per kernel: name, weight MB, ms per run at each row count, and whether a lone row's bits are its bits
    among other rows. Kernels take turns at each repeat, so a busy minute on a shared host slows them all."""
    shapes = stage0_shapes(args)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    models = {k.name: kernel_graph(k, shapes) for k in kernels}
    sessions = {name: ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
                for name, m in models.items()}
    rng = np.random.default_rng(1)
    feeds = {r: _feeds(next(iter(sessions.values())), r, rng) for r in rows}
    best: dict = {}
    for _ in range(repeats):
        for name, session in sessions.items():
            for r in rows:
                ms = _best_ms(session, feeds[r], 1)
                best[name, r] = min(best.get((name, r), ms), ms)
    return [{"kernel": name, "weight_mb": round(_weight_bytes(models[name]) / 1e6, 2),
             "ms": {r: round(best[name, r], 3) for r in rows},
             "row_alone_is_the_same": _row_alone_is_the_same(session, rng)} for name, session in sessions.items()]


@click.command()
@click.option("--preset", type=click.Choice(sorted(MODEL_CONFIGS)), default="mid", show_default=True)
@click.option("--rows", type=click.IntRange(min=1), multiple=True, default=(1, 2, 16), show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
def main(preset, rows, threads, repeats):
    """Time the weight products of PRESET's stage 0 in every kernel form, beside this run's streaming rate."""
    args = ModelArgs(**cast(dict[str, Any], MODEL_CONFIGS[preset]))
    table = kernel_table(args, list(rows), threads, repeats)
    stream = streaming_bytes_per_s(threads)
    click.echo(f"stage 0 of {preset}: {len(stage0_shapes(args))} weight products; float32 one-row streaming "
               f"{stream / 1e9:.1f} GB/s, {threads} thread(s)")
    click.echo(f"{'kernel':>11}  {'MB':>6}  " + "  ".join(f"{f'{r} rows ms':>10}  {'GB/s':>5}" for r in rows)
               + "  row alone = in a call")
    for row in table:
        cells = "  ".join(f"{row['ms'][r]:>10.3f}  {row['weight_mb'] / row['ms'][r]:>5.1f}" for r in rows)
        click.echo(f"{row['kernel']:>11}  {row['weight_mb']:>6.1f}  {cells}  {row['row_alone_is_the_same']}")


if __name__ == "__main__":
    main()
