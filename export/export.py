"""checkpoint.pt -> exported model folder (docs/architecture.md, "Exported model folder").

    from dnd_export import export_model
    export_model("runs/words/checkpoint.pt", "out/model", dtype="fp16", check=True)
    export_model("runs/words/checkpoint.pt", "out/cpu-model", dtype="fp32", decoder_dtype="int8")

Everything is written into a hidden temporary folder beside the target and renamed into
place at the end, so a failed, interrupted or disk-full export never leaves a folder that
looks like a model.
"""
import dataclasses
import logging
from pathlib import Path

import numpy as np
import onnx
import torch

import dnd_sdk
from dnd_sdk.backends import refusals
from dnd_sdk.errors import InvalidInputError, arg
from dnd_sdk.folders import check_target, staged_folder, write_failure
from dnd_sdk.model_folder.graphs import GraphFacts
from dnd_sdk.model_folder.manifest import (
    EXPORTED,
    FileEntry,
    FileRef,
    Manifest,
    Stage,
    sha256_file,
    write_manifest,
)
from dnd_sdk.sampler import SamplingParams
from dnd_training.checkpoint import load_checkpoint
from .errors import ExportError
from .onnx_export import EXTERNAL_DATA_THRESHOLD, export_graph
from .quantize import QUANTIZED, quantization_facts, quantize_decoder, quantize_weights
from .stages import DecoderWrapper, StageWrapper

log = logging.getLogger(__name__)

# int8/int4: float32 graphs whose MatMul weights ONNX Runtime's quantization tools then rewrite
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          **{dtype: torch.float32 for dtype in QUANTIZED}}
# decoder_dtype="auto": the decoder's dtype for each export dtype. ONNX Conv takes bfloat16 only from
# opset 22 (past the TorchScript exporter), so a bf16 export keeps the small tokenizer decoder in
# float32; int8/int4 exports are for ONNX Runtime, whose int8 convolution runs it about twice as fast.
# Its I/O is int64 -> uint8 either way.
AUTO_DECODER_DTYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "fp32", **{dtype: "int8" for dtype in QUANTIZED}}
DECODER_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.float32}
DEFAULT_OPSET = 17
# the opsets the suite exports and lints (14 to 20); 20 is the TorchScript exporter's ceiling
MIN_OPSET, MAX_OPSET = 14, 20
CALIBRATION_IMAGES = 16  # int8 decoders: code grids whose activation ranges set the int8 scales


def export_model(checkpoint_path, out_dir, dtype: str = "fp32", opset: int = DEFAULT_OPSET,
                 check: bool = False, force: bool = False, decoder_dtype: str = "auto",
                 external_threshold: int = EXTERNAL_DATA_THRESHOLD) -> Path:
    """Export a checkpoint to `out_dir` and return its path. Raises a DndError on bad input.

    decoder_dtype: "auto" (AUTO_DECODER_DTYPES[dtype]), "fp32", "fp16" or "int8" (ONNX Runtime only:
    tokens stay those of `dtype`, pixels come from int8 convolutions)."""
    if dtype not in DTYPES:
        raise InvalidInputError(f"dtype {dtype!r} is not supported; choose one of {sorted(DTYPES)}")
    if decoder_dtype not in ("auto", *DECODER_TORCH_DTYPES):
        raise InvalidInputError(f"decoder_dtype {decoder_dtype!r} is not supported; choose auto or one of "
                                f"{sorted(DECODER_TORCH_DTYPES)}")
    decoder_dtype = AUTO_DECODER_DTYPES[dtype] if decoder_dtype == "auto" else decoder_dtype
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise InvalidInputError(f"opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
    if check and dtype == "bf16":
        raise InvalidInputError("--check runs the graphs in ONNX Runtime, which has no bfloat16 CPU kernels; "
                                "check an fp16 or fp32 export, or validate bf16 engines with dnd-build")
    if check and dtype in QUANTIZED:
        raise InvalidInputError(f"--check compares with PyTorch at float tolerances, which {dtype} weights do not "
                                "meet by design; judge a quantized export with `dnd eval ocr MODEL_DIR`")
    graphs = _runnable_graphs(dtype, decoder_dtype)
    out_dir = Path(out_dir)
    check_target(out_dir, force, source=checkpoint_path, ours=EXPORTED)
    # mmap: the weights stay in the file until used, so the export holds one copy of them in its dtype
    ckpt = load_checkpoint(checkpoint_path, mmap=True)  # CheckpointError names what is wrong
    _check_supported(ckpt.model_args)
    sampler_defaults = _sampler_defaults(ckpt.meta, ckpt.model_args)
    tokenizer = ckpt.build_tokenizer(DECODER_TORCH_DTYPES[decoder_dtype])
    model = ckpt.stream_model(DTYPES[dtype])
    labels = list(ckpt.labels)
    del ckpt  # its last tensors hold the file's mapping

    try:
        with staged_folder(out_dir, force, ours=EXPORTED) as tmp:
            files, stages = _write_graphs(tmp, model, tokenizer, int(opset), external_threshold, dtype, decoder_dtype)
            manifest = Manifest(
                dtype=dtype, opset=int(opset), model_config=dataclasses.asdict(model.args),
                tokenizer_config=dataclasses.asdict(tokenizer.config), labels=labels,
                latent={"h": model.args.grid_h, "w": model.args.grid_w, "depth": model.args.num_pred_heads},
                image={"height": tokenizer.config.image_height, "width": tokenizer.config.image_width},
                null_class=model.args.num_classes if model.args.has_null_class else None,
                sampler_defaults=sampler_defaults, stages=stages, files=files, cache_length=model.args.cache_length,
                decoder_dtype=graphs.decoder_dtype, quantization=graphs.quantization,
                producer={"dnd_sdk": dnd_sdk.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                          "exporter": "torch.onnx TorchScript", **provenance(checkpoint_path)})
            write_manifest(tmp, manifest)
            if check:
                from .check import check_export  # polygraphy is only needed for --check
                check_export(tmp, model, tokenizer)
    except OSError as e:
        raise ExportError(write_failure(out_dir, e)) from e
    log.debug("exported %s (%s) to %s", checkpoint_path, dtype, out_dir)
    return out_dir


def provenance(checkpoint_path) -> dict:
    """Which checkpoint.pt the folder was exported from: `dnd info` shows it, and `dnd bench MODEL` compares the
    runtime with that file when it still holds the same bytes."""
    path = Path(checkpoint_path).resolve()
    return {"checkpoint": str(path), "checkpoint_sha256": sha256_file(path)}


def _runnable_graphs(dtype: str, decoder_dtype: str) -> GraphFacts:
    """The facts the manifest will state about the graphs of this export, once some backend said it runs them:
    a combination that every backend refuses (bf16 stage graphs with an int8 decoder) is refused before
    anything is written."""
    graphs = GraphFacts(dtype, decoder_dtype, quantization_facts(dtype, decoder_dtype))
    answers = refusals(graphs)
    if None not in answers.values():
        raise InvalidInputError(
            f"{arg('dtype')} {dtype} with {arg('decoder_dtype')} {decoder_dtype} makes a folder no backend runs: "
            + "; ".join(f"{name}: {refusal}" for name, refusal in answers.items())
            + f". Keep a float {arg('decoder_dtype')} (auto, fp32 or fp16) for bf16, or use {arg('dtype')} "
            f"{', '.join(('fp32', 'fp16', *QUANTIZED))} with an int8 decoder")
    return graphs


def _write_graphs(tmp: Path, model, tokenizer, opset: int, threshold: int, dtype: str, decoder_dtype: str) -> tuple:
    files, stages = {}, []
    for k in range(model.args.num_pred_heads):
        wrapper = StageWrapper(model, k)
        name = Manifest.stage_graph(k)
        ins, outs, extra = export_graph(wrapper, wrapper.example_inputs(), tmp / f"{name}.onnx", wrapper.io.inputs,
                                        wrapper.io.outputs, wrapper.io.dynamic_axes, opset, threshold)
        if dtype in QUANTIZED:
            extra = quantize_weights(tmp / f"{name}.onnx", dtype, threshold)
        files[name] = FileEntry(f"{name}.onnx", inputs=ins, outputs=outs, external_data=[FileRef(f) for f in extra])
        stages.append(Stage(name, wrapper.io.layers, k))
    a = model.args
    codes = torch.randint(0, a.vocab_size, (2, a.grid_h, a.grid_w, a.num_pred_heads), generator=torch.Generator().manual_seed(0))
    ins, outs, extra = export_graph(DecoderWrapper(tokenizer), (codes,), tmp / "decoder.onnx", ["codes"], ["image"],
                                    DecoderWrapper.dynamic_axes(), opset, threshold)
    if decoder_dtype == "int8":
        extra = quantize_decoder(tmp / "decoder.onnx", _calibration_codes(a), threshold)
    files["decoder"] = FileEntry("decoder.onnx", inputs=ins, outputs=outs, external_data=[FileRef(f) for f in extra])
    np.savez(tmp / "embeddings.npz", tok_embeddings=_to_numpy(model.tok_embeddings.weight),
             cls_embedding=_to_numpy(model.cls_embedding.embedding_table.weight))
    files["embeddings"] = FileEntry("embeddings.npz")
    return files, stages


def _calibration_codes(args, images: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Uniformly random code grids: they sum D random codebook rows per cell, so the decoder's activations
    span at least the ranges real images reach, and the export needs no sampling run."""
    shape = (images, args.grid_h, args.grid_w, args.num_pred_heads)
    return np.random.default_rng(0).integers(0, args.vocab_size, shape)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: keep the bit patterns
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _check_supported(args) -> None:
    if args.share_prediction_heads and args.num_pred_heads > 1:
        # each stage graph would embed its own copy of the one shared head: the folder's
        # no-weight-twice rule (and its size) would break silently
        raise InvalidInputError(
            f"share_prediction_heads=True with {args.num_pred_heads} heads is not supported by the export: every "
            "stage graph would store the shared head again. Export a model trained with separate heads.")


def _sampler_defaults(meta: dict, args) -> dict:
    """The checkpoint's default sampling settings, as the runtime will take them: values it would refuse (a
    string, a bool, a fraction where top_k counts) fail here, not at every later sample() call."""
    given = dict(meta.get("sampler_defaults") or {})  # its keys were checked with the checkpoint
    try:
        params = SamplingParams.from_stored(given).validate(args.vocab_size, args.num_pred_heads, args.has_null_class)
    except InvalidInputError as e:
        raise InvalidInputError(f"checkpoint meta['sampler_defaults']: {e}; set them with `dnd train set-defaults` "
                                "and re-export") from None
    return params.stored()
