"""`dnd-export --check`: lint the graphs for TensorRT, then compare them with the PyTorch model (Polygraphy).

The TensorRT lint (`trt_lint`) runs first: ONNX Runtime would run a graph TensorRT cannot, so
the comparison below says nothing about the TensorRT path, and any finding fails the check.

Each stage graph is fed what the runtime would feed it: `decode_steps + 1` one-position
steps whose caches hold the PyTorch wrapper's own new keys and values, rows at different
positions. ONNX Runtime (CPU) and the PyTorch wrapper see identical feeds, so
the error measured is the export's alone, not an accumulation over steps.
"""
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from polygraphy.comparator import Comparator, IterationResult, SimpleCompareFunc
from polygraphy.logger import G_LOGGER

from dnd_sdk.model_folder.manifest import load_manifest
from .errors import ExportCheckError
from .stages import DecoderWrapper, StageWrapper
from .trt_lint import lint_folder

log = logging.getLogger(__name__)

# (atol, rtol) per export dtype; an element passes when either holds. Decoder pixels are
# uint8, where a float error at a floor boundary moves a pixel by one step.
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (2e-2, 2e-2), "bf16": (1e-1, 5e-2)}
# Half-precision outputs also get an absolute tolerance of a few units in the last place of the
# output's largest value: a dot product whose terms reach 30 carries errors of that size into
# every element, small ones included (fp16: 2^-11 relative, so 4 ulps = 2e-3; bf16: 2^-8).
SCALE_ATOL = {"fp32": 0.0, "fp16": 2e-3, "bf16": 1.6e-2}
# ONNX Runtime has no bfloat16 CPU kernels (MatMul, Mul...), so bf16 graphs are checked by TensorRT only
CHECKABLE = ("fp32", "fp16")
PIXEL_ATOL = {"fp32": 1, "fp16": 4, "bf16": 8}
# An int8 decoder approximates the float one by design: it passes on the PSNR of its uint8 images
# against PyTorch's (the shipped word model's, whose OCR it keeps, is 37 dB on random codes)
MIN_INT8_PSNR_DB = 30.0


@dataclass
class OutputError:
    graph: str
    output: str
    max_abs: float
    max_rel: float
    passed: bool
    note: str = ""

    def __str__(self) -> str:
        mark = "ok  " if self.passed else "FAIL"
        rel = f"{self.max_rel:.3g}" if np.isfinite(self.max_rel) else "n/a"  # pixels have no relative error
        return f"{mark} {self.graph:<8} {self.output:<24} max abs {self.max_abs:.3g}  max rel {rel}{self.note}"


def check_export(model_dir, model, tokenizer, decode_steps: int = 3, batch: int = 2, seed: int = 0) -> list:
    """Lint every graph for TensorRT and compare it with PyTorch; log one row per output.

    Raises ExportCheckError on any lint finding or on an output past tolerance.
    """
    manifest = load_manifest(model_dir, verify=False)
    assert manifest.dtype in CHECKABLE, f"{manifest.dtype} graphs cannot run in ONNX Runtime on CPU"
    if importlib.util.find_spec("onnxruntime") is None:
        raise ExportCheckError("--check runs the graphs in ONNX Runtime, which is not installed; "
                               "pip install 'dnd-sdk[cpu]' (or 'dnd-sdk[gpu]'), or export without --check")
    findings = lint_folder(model_dir)
    if findings:
        raise ExportCheckError(f"{len(findings)} TensorRT lint finding(s), so dnd-build would fail or build wrong "
                               "engines: " + "; ".join(map(str, findings)) + ". Nothing was written; this is a bug "
                               "of the exporter, report it with the checkpoint's config.")
    log.info("TensorRT lint: no findings")
    atol, rtol = TOLERANCES[manifest.dtype]
    g = torch.Generator().manual_seed(seed)
    rows = []
    for k, feeds in enumerate(stage_feeds(model, decode_steps, batch, g)):
        wrapper = StageWrapper(model, k)
        expected = [_run_torch(wrapper, wrapper.io.outputs, feed) for feed in feeds]
        rows += _compare(manifest.graph_path(manifest.stage_graph(k)), feeds, expected, atol, rtol,
                         SCALE_ATOL[manifest.dtype])
    a = model.args
    codes = torch.randint(0, a.vocab_size, (batch, a.grid_h, a.grid_w, a.num_pred_heads), generator=g)
    feeds = [{"codes": codes.numpy()}]
    expected = [_run_torch(DecoderWrapper(tokenizer), ["image"], feeds[0])]
    if manifest.decoder_dtype == "int8":
        rows.append(_compare_psnr(manifest.graph_path("decoder"), feeds[0], expected[0]["image"]))
    else:
        rows += _compare(manifest.graph_path("decoder"), feeds, expected, PIXEL_ATOL[manifest.dtype], 0.0)
    for row in rows:
        log.info("%s", row)
    failed = [r for r in rows if not r.passed]
    if failed:
        raise ExportCheckError(
            f"{len(failed)} output(s) differ from PyTorch beyond tolerance (atol {atol}, rtol {rtol}; pixels "
            f"{PIXEL_ATOL[manifest.dtype]}, or {MIN_INT8_PSNR_DB:g} dB for an int8 decoder): "
            + "; ".join(f"{r.graph}/{r.output} abs {r.max_abs:.3g}{r.note}" for r in failed)
            + ". Nothing was written; report this with the checkpoint's config, or try --dtype fp32.")
    return rows


@torch.no_grad()
def stage_feeds(model, decode_steps: int, batch: int, g: torch.Generator) -> list:
    """Per stage, the list of feed dicts (prefill, then decode steps), built by running PyTorch.

    Row r starts r steps late (its cache slots hold random values before), so rows sit at
    different positions in every call, as under continuous batching.
    """
    a, dtype = model.args, next(model.parameters()).dtype
    D, L = a.num_pred_heads, a.cache_length
    wrappers = [StageWrapper(model, k) for k in range(D)]
    caches = [[torch.randn(batch, a.n_kv_head, L, a.head_dim, generator=g).to(dtype) for _ in w.io.inputs[3:]]
              for w in wrappers]
    feeds = [[] for _ in range(D)]
    labels = torch.randint(0, a.num_classes, (batch,), generator=g)
    for step in range(decode_steps + 1):
        positions = (step - torch.arange(batch)).clamp(min=0)
        mask = torch.arange(L)[None, :] < positions[:, None]
        codes = model.embed_codes(torch.randint(0, a.vocab_size, (batch, 1, D), generator=g))
        hidden = torch.where((positions == 0)[:, None, None], model.embed_condition(labels), codes).float()
        for k, w in enumerate(wrappers):
            feeds[k].append(dict(zip(w.io.inputs, [_np(t).copy() for t in (hidden, positions, mask, *caches[k])])))
            _, hidden, *new = w(hidden, positions, mask, *caches[k])
            for cache, fresh in zip(caches[k], new):
                cache[torch.arange(batch), :, positions] = fresh[:, :, 0]
            token = torch.randint(0, a.vocab_size, (batch, 1), generator=g)
            hidden = hidden + model.tok_embeddings(token).float()
    return feeds


@torch.no_grad()
def _run_torch(wrapper, output_names, feed: dict) -> dict:
    outs = wrapper(*[torch.from_numpy(v) for v in feed.values()])
    outs = outs if isinstance(outs, tuple) else (outs,)
    return {name: _np(t) for name, t in zip(output_names, outs)}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _compare(graph: Path, feeds: list, expected: list, atol: float, rtol: float, scale_atol: float = 0.0) -> list:
    scale = {name: max(float(np.abs(out[name]).max(initial=0)) for out in expected) for name in expected[0]}
    atol = {name: max(atol, scale_atol * scale[name]) for name in expected[0]}
    with G_LOGGER.verbosity(G_LOGGER.ERROR), np.errstate(divide="ignore", invalid="ignore"):
        runner = OnnxrtRunner(SessionFromOnnx(str(graph), providers=["cpu"]))
        results = Comparator.run([runner], data_loader=feeds)
        results.append(("pytorch", [IterationResult(out, runner_name="pytorch") for out in expected]))
        accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol))
    # one compare function, one runner pair (onnxrt, pytorch): a list of {output: result} per iteration
    per_iteration = next(iter(accuracy[0].values()))
    rows = []
    for name in expected[0]:
        stats = [it[name] for it in per_iteration]
        rows.append(OutputError(graph.stem, name, max(s.max_absdiff for s in stats),
                                max(s.max_reldiff for s in stats), all(bool(s) for s in stats)))
    return rows


def _compare_psnr(graph: Path, feed: dict, expected: np.ndarray) -> OutputError:
    from dnd_sdk.backends.onnxrt import session_from_onnx  # onnxruntime is only needed for --check

    got = session_from_onnx(graph, "CPUExecutionProvider").run(["image"], feed)[0]
    diff = got.astype(np.float64) - expected.astype(np.float64)
    mse = float(np.mean(diff ** 2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
    return OutputError(graph.stem, "image", float(np.abs(diff).max()), float("nan"), psnr >= MIN_INT8_PSNR_DB,
                       f"  PSNR {psnr:.1f} dB (int8, at least {MIN_INT8_PSNR_DB:g})")
