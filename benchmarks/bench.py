"""Images/s of the torch-free runtime (dnd_sdk.Generator) vs the PyTorch reference sampler, same model, same run.

    dnd bench                                                   # random "tiny" model, exported to a temp dir
    dnd bench out/model                                         # against the checkpoint it was exported from
    dnd bench --preset mid --dtype int8 --batch-size 1 --batch-size 16   # a random preset, int8 stages and decoder
    dnd bench --preset mid --decoder-dtype int8                 # fp32 stages (exact tokens), int8 decoder
    dnd bench out/model --checkpoint ckpt.pt --batch-size 1 --batch-size 16 --threads 2 -o bench.json
    dnd bench --preset mid --batch-size 64 --profile            # where the runtime's time goes
    dnd bench out/engines --checkpoint ckpt.pt --backend tensorrt --reference-device cuda   # both on the GPU

Both sides sample the same codes (the model's own default sampling unless overridden) and
decode them to uint8 images: the runtime with its decoder graph, the reference with the RQ
tokenizer in eager PyTorch. The JSON holds images/s per batch size for each side, their ratio
(runtime / reference), the device the reference ran on and the CPU, so that a ratio always says
what it is compared against (without a reference, the runtime's images/s alone), and each
result against its floor: the images/s that the weight-streaming and compute rates measured in
the same run allow (`dnd_bench.floor`); `--profile` adds the runtime's seconds in stage calls,
sampling and decoder, the model's GFLOP per image and their rate against the same run's GEMM rate.
"""
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dnd_sdk.cpu import cpu_features
from dnd_sdk.errors import InvalidInputError
from dnd_sdk.model_folder.manifest import sha256_file
from dnd_training.pixels import to_uint8
from dnd_training.random_checkpoint import random_checkpoint
from .floor import NO_FLOOR, NO_FLOOR_REPORT, Floor, Rates, decoder_graph_gflop, fp32_work, model_work
from .profile import decoder_gflop, gemm_gflops, profile_runtime


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


def reference_checkpoint(manifest) -> tuple:
    """(path, why) of the checkpoint.pt the folder was exported from, if that file still holds the same bytes;
    else (None, why not). `dnd-export` records it in the manifest's producer entry."""
    path, digest = manifest.producer.get("checkpoint"), manifest.producer.get("checkpoint_sha256")
    if not path:
        return None, "the folder does not name the checkpoint it was exported from"
    if not Path(path).is_file():
        return None, f"{path}, which it was exported from, does not exist here"
    if digest != sha256_file(path):
        return None, f"{path} has changed since the folder was exported from it"
    return Path(path), f"{path}, which it was exported from"


def bench(checkpoint, model_dir, batches, num_batches: int, threads: int, repeats: int, sampling: dict,
          backend: str = "onnxruntime-cpu", reference_device: str = "cpu", profile: bool = False) -> dict:
    """Images/s of the runtime on `model_dir` and, given `checkpoint` (None: the runtime alone), of the PyTorch
    reference on it, at each batch size."""
    from dnd_sdk import Generator

    if checkpoint is None and profile:
        raise InvalidInputError("--profile counts the model's FLOPs from its checkpoint; give --checkpoint")
    if reference_device == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"--reference-device cuda needs a GPU and a torch build with CUDA; this torch "
                                f"({torch.__version__}) sees none. Compare with the CPU reference instead.")
    torch.set_num_threads(threads)
    reference = None if checkpoint is None else Reference(checkpoint, reference_device)
    gen = Generator(model_dir, backend=backend, threads=threads)
    sampling = {**gen.manifest.sampler_defaults, **sampling}  # the model's own defaults unless overridden
    guided = sampling["cfg_scale"] != 1.0
    rows_per_image = 2 if guided else 1  # guidance runs an unconditional row beside each image's
    floor = _floor(gen, reference, guided, [batch * rows_per_image for batch in batches], threads)
    rows = []
    for batch in batches:
        num = batch * num_batches
        labels = (np.arange(num) % gen.num_classes).tolist()
        runtime = lambda: gen.sample(labels, seed=0, batch_size=batch, **sampling)  # noqa: E731
        if reference is None:
            ours, = _rates(num, repeats, runtime)
            ref = None
        else:
            ours, ref = _rates(num, repeats, runtime, lambda: reference.sample(labels, batch, sampling))
        rows.append({"batch_size": batch, "images": num, "runtime_images_per_s": round(ours, 2),
                     "reference_images_per_s": None if ref is None else round(ref, 2),
                     "ratio": None if ref is None else round(ours / ref, 2),
                     **(NO_FLOOR if floor is None else floor.keys(batch, batch * rows_per_image, ours))})
        if profile and reference is not None:  # always: --profile without a checkpoint is refused above
            rows[-1]["profile"] = profile_runtime(gen, reference.model.args, reference.tokenizer, runtime, num, guided)
    report: dict = {"model": str(model_dir), "checkpoint": None if checkpoint is None else str(checkpoint),
              "backend": gen.backend_name,
              "reference": None if reference is None else f"PyTorch on {reference_device}",
              "dtype": gen.manifest.dtype, "decoder_dtype": gen.manifest.decoder_dtype, "threads": threads,
              "sampling": sampling, "torch": torch.__version__, "cpu": cpu_features().summary(),
              **(NO_FLOOR_REPORT if floor is None else floor.report_keys()), "results": rows}
    if profile:
        report["gemm_gflops_per_s"] = round(gemm_gflops(threads), 2)
        for row in rows:  # utilization of each part against the same run's GEMM rate
            for part in ("stages", "decoder"):
                row["profile"][f"{part}_utilization"] = round(row["profile"][f"{part}_gflops_per_s"]
                                                              / report["gemm_gflops_per_s"], 3)
    gen.close()
    return report


def _floor(gen, reference, guided: bool, rows: list, threads: int) -> Optional[Floor]:
    """The floor of this run at each of `rows`, its rates measured now; None for a backend off the CPU."""
    if gen.backend_name != "onnxruntime-cpu":
        return None
    decoder_flop, decoder_source = _decoder_flop(gen.manifest, reference)
    work = model_work(gen.manifest, guided, decoder_flop)
    return Floor(Rates.measure(threads, rows), work, fp32_work(gen.manifest, work), decoder_source)


def _decoder_flop(manifest, reference) -> tuple:
    """(FLOPs of decoding one image, or None; where they come from, for the report): counted on the
    reference's tokenizer when it runs on the CPU, else from the decoder graph's shapes."""
    if reference is not None and reference.device == "cpu":
        return decoder_gflop(reference.tokenizer, reference.model.args) * 1e9, "counted on the checkpoint's tokenizer"
    gflop = decoder_graph_gflop(manifest)
    if gflop is None:
        return None, "left out: the decoder graph's shapes are not all static"
    return gflop * 1e9, "counted on the decoder graph's shapes"


class Reference:
    """The PyTorch reference sampler on a checkpoint, decoding to uint8 images by the runtime's pixel rule."""

    def __init__(self, checkpoint, device: str):
        from dnd_training.checkpoint import load_checkpoint
        ckpt = load_checkpoint(checkpoint)
        self.device = device
        self.model, self.tokenizer = ckpt.build_model().to(device), ckpt.build_tokenizer().to(device)

    @torch.no_grad()
    def sample(self, labels: list, batch: int, sampling: dict) -> None:
        from dnd_training.sampling import generate
        for lo in range(0, len(labels), batch):
            codes = generate(self.model, labels[lo:lo + batch], seed=0, image_indices=range(lo, lo + batch), **sampling)
            to_uint8(self.tokenizer.decode(codes)).permute(0, 2, 3, 1).cpu().numpy()


def bench_command(checkpoint, model_dir, batches, num_batches=4, threads=1, repeats=3, sampling=None,
                  backend: str = "onnxruntime-cpu", preset: str = "tiny", dtype: str = "fp32",
                  profile: bool = False, reference_device: str = "cpu", decoder_dtype: str = "auto",
                  notice=lambda text: None) -> dict:
    """`bench` with defaults filled in; `notice(text)` is told what is compared with what.
    - neither: a random `preset` model, exported to a temporary folder;
    - a checkpoint alone: its export to a temporary folder;
    - a model folder alone: against the checkpoint it was exported from if that file is unchanged, else the
      runtime alone."""
    if not batches or min(batches) < 1:
        raise InvalidInputError(f"--batch-size must be 1 or more, got {min(batches, default=None)}")
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint is None and model_dir is None:
            notice(f"No MODEL given: benchmarking a random `{preset}` preset (--preset) exported to a temporary "
                   "folder. Give MODEL (an exported folder) or --checkpoint to benchmark yours.")
            checkpoint = random_checkpoint(Path(tmp) / "checkpoint.pt", preset)[0]
        elif checkpoint is None:
            from dnd_sdk.model_folder.manifest import load_manifest
            checkpoint, why = reference_checkpoint(load_manifest(model_dir, verify=False))
            notice(f"Comparing {model_dir} with the PyTorch reference on {why}." if checkpoint is not None else
                   f"Benchmarking the runtime alone: {why}; give --checkpoint to compare with PyTorch.")
        if model_dir is None:
            from dnd_export import export_model
            model_dir = export_model(checkpoint, Path(tmp) / "model", dtype=dtype, decoder_dtype=decoder_dtype)
        return bench(checkpoint, model_dir, batches, num_batches, threads, repeats, sampling or {}, backend,
                     reference_device, profile)


def table(report: dict) -> str:
    """The report as people read it: one line per batch size."""
    cpu = report["cpu"]
    flags = ", ".join(f for f, on in cpu["flags"].items() if on) or "none of " + ", ".join(cpu["flags"])
    decoder = f", decoder {report['decoder_dtype']}" if report["decoder_dtype"] else ""
    lines = [f"model:     {report['model']} ({report['dtype']}{decoder}) on {report['backend']}, "
             f"{report['threads']} thread(s)",
             f"reference: {report['reference'] or 'none (the runtime alone)'}"
             + (f", {report['checkpoint']}" if report["checkpoint"] else ""),
             f"cpu:       {cpu['model']} ({flags})",
             "",
             f"floor:     {_floor_line(report)}",
             "",
             f"{'batch size':>10}  {'images':>6}  {'runtime img/s':>13}  {'reference img/s':>15}  {'ratio':>6}  "
             f"{'floor img/s':>11}  {'of floor':>8}  {'bound':>7}"]
    for row in report["results"]:
        ref = "-" if row["reference_images_per_s"] is None else f"{row['reference_images_per_s']:.2f}"
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        floor, of_floor = (("-", "-") if row["floor_images_per_s"] is None else
                           (f"{row['floor_images_per_s']:.2f}", f"{row['of_floor']:.2f}"))
        lines.append(f"{row['batch_size']:>10}  {row['images']:>6}  {row['runtime_images_per_s']:>13.2f}  "
                     f"{ref:>15}  {ratio:>6}  {floor:>11}  {of_floor:>8}  {row['bound'] or '-':>7}")
    return "\n".join(lines)


def _floor_line(report: dict) -> str:
    """The rates the floor stands on, or why there is none."""
    if "no_floor" in report:
        return f"none: {report['no_floor']}"
    compute = ", ".join(f"{rows}: {rate:.1f}" for rows, rate in report["compute_gflops_per_s"].items())
    return (f"{report['streaming_gb_per_s']:.2f} GB/s weight streaming, compute GFLOP/s by rows {compute}; "
            f"decoder FLOPs {report['floor_decoder']}")
