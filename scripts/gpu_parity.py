"""Parity of the GPU backends with ONNX Runtime CPU on the same exported model (run by gpu-check.sh).

    python scripts/gpu_parity.py OUT    # OUT holds model-fp32/, engines-fp32/, engines-fp16/

For each GPU folder/backend: the first stage's logits on the same input (max abs difference),
the share of identical codes and of identical images over 64 sampled images (the model's
defaults and greedy), and the decoder's pixels on the same codes. Exits 1 when TensorRT fp32
strays past tolerance.
"""
import json
import sys
from pathlib import Path

import numpy as np

from dnd_sdk import Generator
from dnd_sdk.errors import DndError


def first_logits(gen: Generator, rows: int = 4) -> np.ndarray:
    gen.backend.reset(rows)
    hidden = gen.cls_embedding[np.arange(rows) % gen.num_classes][:, None, :]
    return gen.backend.stage_step(0, hidden)[0].copy()


def compare(ref: Generator, gen: Generator) -> dict:
    out = {"backend": gen.backend_name,
           "stage0_logits_max_abs": float(np.abs(first_logits(gen) - first_logits(ref)).max())}
    for name, sampling in (("defaults", {}), ("greedy", {"temperature": 0.0})):
        a, b = (g.sample_codes(num=64, seed=0, batch_size=16, **sampling) for g in (ref, gen))
        out[f"{name}_token_agreement"] = float((a == b).mean())
        out[f"{name}_identical_images"] = float((a == b).all(axis=(1, 2, 3)).mean())
    codes = ref.sample_codes(num=16, seed=1)
    pixels = [np.stack([np.asarray(im, dtype=np.int16) for im in g.decode(codes)]) for g in (ref, gen)]
    out["decoder_pixels_max_abs"] = int(np.abs(pixels[0] - pixels[1]).max())
    return out


def main(out: Path) -> int:
    ref = Generator(out / "model-fp32", backend="onnxruntime-cpu")
    report = []
    for folder, backend in (("engines-fp32", "tensorrt"), ("engines-fp16", "tensorrt"), ("model-fp32", "onnxruntime-cuda")):
        try:
            with Generator(out / folder, backend=backend) as gen:
                report.append({"folder": folder, **compare(ref, gen)})
        except DndError as e:  # no GPU, no TensorRT, or a folder the build did not write
            report.append({"folder": folder, "backend": backend, "unavailable": str(e)})
    print(json.dumps(report, indent=2))
    trt32 = report[0]
    ok = trt32.get("stage0_logits_max_abs", 1.0) < 1e-3 and trt32.get("greedy_token_agreement", 0.0) >= 0.99 \
        and trt32.get("decoder_pixels_max_abs", 255) <= 1
    print("parity:", "ok" if ok else "FAILED (TensorRT fp32 vs ONNX Runtime CPU)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
