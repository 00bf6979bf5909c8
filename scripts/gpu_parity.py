"""Parity of a GPU backend with ONNX Runtime CPU on the same exported model (run by gpu-check.sh).

    python scripts/gpu_parity.py REF_DIR CANDIDATE_DIR BACKEND DTYPE [--json FILE]
    python scripts/gpu_parity.py out/model-fp16 out/engines-fp16 tensorrt fp16

REF_DIR runs on ONNX Runtime CPU: the export of the same dtype, or the fp32 export for bf16
(ONNX Runtime has no bf16 CPU kernels). Measured: the first stage's logits on the same input
(max abs difference), the share of identical codes and images over 64 sampled images (the
model's defaults and greedy), and the decoder's pixels on the same codes. Prints one verdict
line, appends the numbers to FILE as a JSON line, and exits 1 when a limit is passed.
"""
import argparse
import json
import sys

import numpy as np

from dnd_sdk import Generator
from dnd_sdk.errors import DndError

# per dtype: stage0 logits max abs, greedy token agreement (None: not judged), decoder pixels max abs.
# bf16 is compared with the fp32 export, so its greedy codes drift apart with its rounding and are
# only reported; its decoder stays fp32 (ONNX Conv takes bf16 from opset 22 only).
LIMITS = {"fp32": (1e-3, 0.99, 1), "fp16": (5e-2, 0.9, 4), "bf16": (2.5e-1, None, 1)}


def first_logits(gen: Generator, rows: int = 4) -> np.ndarray:
    gen.backend.reset(rows)
    hidden = gen.cls_embedding[np.arange(rows) % gen.num_classes][:, None, :]
    return gen.backend.stage_step(0, hidden)[0].copy()


def compare(ref: Generator, gen: Generator) -> dict:
    out = {"stage0_logits_max_abs": float(np.abs(first_logits(gen) - first_logits(ref)).max())}
    for name, sampling in (("defaults", {}), ("greedy", {"temperature": 0.0})):
        a, b = (g.sample_codes(num=64, seed=0, batch_size=16, **sampling) for g in (ref, gen))
        out[f"{name}_token_agreement"] = float((a == b).mean())
        out[f"{name}_identical_images"] = float((a == b).all(axis=(1, 2, 3)).mean())
    codes = ref.sample_codes(num=16, seed=1)
    pixels = [np.stack([np.asarray(im, dtype=np.int16) for im in g.decode(codes)]) for g in (ref, gen)]
    out["decoder_pixels_max_abs"] = int(np.abs(pixels[0] - pixels[1]).max())
    return out


def verdict(result: dict, dtype: str) -> list:
    """The limits `result` passes, as text, and those it does not."""
    logits, agreement, pixels = LIMITS[dtype]
    checks = [("stage0 logits max abs", result["stage0_logits_max_abs"], "<=", logits),
              ("greedy token agreement", result["greedy_token_agreement"], ">=", agreement),
              ("decoder pixels max abs", result["decoder_pixels_max_abs"], "<=", pixels)]
    passed, failed = [], []
    for name, value, op, limit in checks:
        if limit is None:
            passed.append(f"{name} {value:.3g} (reported only)")
        else:
            ok = value <= limit if op == "<=" else value >= limit
            (passed if ok else failed).append(f"{name} {value:.3g} {op if ok else 'not ' + op} {limit:g}")
    return [passed, failed]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ref_dir")
    p.add_argument("candidate_dir")
    p.add_argument("backend")
    p.add_argument("dtype", choices=sorted(LIMITS))
    p.add_argument("--json", help="append the result as one JSON line to this file")
    args = p.parse_args(argv)
    label = f"{args.backend} {args.dtype} vs onnxruntime-cpu"
    try:
        with Generator(args.ref_dir, backend="onnxruntime-cpu") as ref, \
                Generator(args.candidate_dir, backend=args.backend) as gen:
            result = compare(ref, gen)
    except DndError as e:  # no GPU, no TensorRT, or engines from another version
        print(f"{label}: FAILED: {e}")
        return 1
    passed, failed = verdict(result, args.dtype)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"backend": args.backend, "dtype": args.dtype, "reference": args.ref_dir,
                                **result, "passed": not failed}) + "\n")
    print(f"{label}: " + (f"FAILED: {'; '.join(failed)} (ok: {'; '.join(passed)})" if failed else
                          f"ok ({'; '.join(passed)})"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
