"""Images/s of the torch-free runtime (dnd_sdk.Generator) vs the PyTorch reference sampler, same model, same run.

    dnd bench                                                   # random "tiny" model, exported to a temp dir
    dnd bench --preset mid --dtype int8 --batch 1 --batch 16    # a random MODEL_CONFIGS preset, int8 stages and decoder
    dnd bench --preset mid --decoder-dtype int8                 # fp32 stages (exact tokens), int8 decoder
    dnd bench --checkpoint ckpt.pt --model out/model --batch 1 --batch 16 --threads 2 -o bench.json
    dnd bench --preset mid --batch 64 --profile                 # where the runtime's time goes
    dnd bench --checkpoint ckpt.pt --model out/engines --backend tensorrt --reference-device cuda   # both on the GPU

Both sides sample the same codes (the model's own default sampling unless overridden) and
decode them to uint8 images: the runtime with its decoder graph, the reference with the RQ
tokenizer in eager PyTorch. The JSON holds images/s per batch size for each side, their ratio
(runtime / reference) and the device the reference ran on, so that a ratio always says what it
is compared against; `--profile` adds the runtime's seconds in stage calls, sampling and
decoder, the model's GFLOP per image and their rate against the same run's GEMM rate.
"""
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dnd_sdk.errors import InvalidInputError
from dnd_training.pixels import to_uint8
from dnd_training.random_checkpoint import random_checkpoint
from .profile import gemm_gflops, profile_runtime


def _rates(num: int, repeats: int, *fns) -> list:
    """Images/s of each fn, the best of `repeats` timed runs. The runs take turns, so both sides of a
    ratio meet the same machine: a slow minute on a shared host slows both, not just one."""
    for fn in fns:
        fn()  # warm-up: session arenas, first-call allocations
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return [num / b for b in best]


def bench(checkpoint, model_dir, batches, num_batches: int, threads: int, repeats: int, sampling: dict,
          backend: str = "onnxruntime-cpu", reference_device: str = "cpu", profile: bool = False) -> dict:
    from dnd_sdk import Generator
    from dnd_training.checkpoint import load_checkpoint
    from dnd_training.sampling import generate

    if reference_device == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"--reference-device cuda needs a GPU and a torch build with CUDA; this torch "
                                f"({torch.__version__}) sees none. Compare with the CPU reference instead.")
    torch.set_num_threads(threads)
    ckpt = load_checkpoint(checkpoint)
    model, tokenizer = ckpt.build_model().to(reference_device), ckpt.build_tokenizer().to(reference_device)
    gen = Generator(model_dir, backend=backend, threads=threads)
    sampling = {**gen.manifest.sampler_defaults, **sampling}  # the model's own defaults unless overridden
    rows = []
    for batch in batches:
        num = batch * num_batches
        labels = (np.arange(num) % gen.num_classes).tolist()

        @torch.no_grad()
        def reference():
            for lo in range(0, num, batch):
                codes = generate(model, labels[lo:lo + batch], seed=0, image_indices=range(lo, lo + batch), **sampling)
                x = tokenizer.decode(codes)
                to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()

        runtime = lambda: gen.sample(labels, seed=0, batch_size=batch, **sampling)  # noqa: E731
        ours, ref = _rates(num, repeats, runtime, reference)
        rows.append({"batch_size": batch, "images": num, "runtime_images_per_s": round(ours, 2),
                     "reference_images_per_s": round(ref, 2), "ratio": round(ours / ref, 2)})
        if profile:
            rows[-1]["profile"] = profile_runtime(gen, model.args, tokenizer, runtime, num, sampling["cfg_scale"] != 1.0)
    report = {"model": str(model_dir), "backend": gen.backend_name, "reference": f"PyTorch on {reference_device}",
              "dtype": gen.manifest.dtype, "decoder_dtype": gen.manifest.decoder_dtype, "threads": threads,
              "sampling": sampling, "torch": torch.__version__, "results": rows}
    if profile:
        report["gemm_gflops_per_s"] = round(gemm_gflops(threads), 2)
        for row in rows:  # utilization of each part against the same run's GEMM rate
            for part in ("stages", "decoder"):
                row["profile"][f"{part}_utilization"] = round(row["profile"][f"{part}_gflops_per_s"]
                                                              / report["gemm_gflops_per_s"], 3)
    gen.close()
    return report


def bench_command(checkpoint, model_dir, batches, num_batches=4, threads=1, repeats=3, sampling=None,
                  backend: str = "onnxruntime-cpu", preset: str = "tiny", dtype: str = "fp32",
                  profile: bool = False, reference_device: str = "cpu", decoder_dtype: str = "auto") -> dict:
    """`bench` with defaults filled in: without a checkpoint, a random `preset` model exported to a temp dir."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = checkpoint or random_checkpoint(Path(tmp) / "checkpoint.pt", preset)[0]
        if model_dir is None:
            from dnd_export import export_model
            model_dir = export_model(checkpoint, Path(tmp) / "model", dtype=dtype, decoder_dtype=decoder_dtype)
        return bench(checkpoint, model_dir, batches, num_batches, threads, repeats, sampling or {}, backend,
                     reference_device, profile)
