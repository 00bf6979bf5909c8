"""`dnd bench`: images/s of the runtime vs the PyTorch reference on the same model, as JSON."""
import json
from pathlib import Path

import click

from dnd_sdk.backends import BACKEND_CHOICES
from dnd_sdk.cli.options import sampler_options
from dnd_sdk.manifest_schema import DECODER_DTYPES
from dnd_training.model import MODEL_CONFIGS


@click.command("bench")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), help="checkpoint.pt [default: a random --preset model]")
@click.option("--model", "model_dir", type=click.Path(file_okay=False, path_type=Path), help="Its export [default: exported to a temp dir]")
@click.option("--preset", type=click.Choice(sorted(MODEL_CONFIGS)), default="tiny", show_default=True,
              help="Without --checkpoint: this MODEL_CONFIGS preset with random weights.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "int8", "int4"]), default="fp32", show_default=True,
              help="Without --model: the export dtype of the temp folder.")
@click.option("--decoder-dtype", type=click.Choice(["auto", *DECODER_DTYPES]), default="auto", show_default=True,
              help="Without --model: the temp folder's decoder precision (dnd-export --decoder-dtype).")
@click.option("--batch", "batches", type=int, multiple=True, default=(1, 16), show_default=True, help="Batch sizes (repeatable).")
@click.option("--num-batches", type=int, default=4, show_default=True, help="Batches per timed run.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Timed runs per setting; the best counts.")
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for both sides.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="onnxruntime-cpu", show_default=True,
              help="The runtime's backend.")
@click.option("--reference-device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the PyTorch reference runs; cuda compares a GPU backend with PyTorch on the same GPU.")
@sampler_options(seed=False)
@click.option("--profile", is_flag=True, help="Also time stage calls, sampling and decoder, and rate them in GFLOP/s "
                                              "against this run's GEMM rate.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the JSON here.")
def bench(checkpoint, model_dir, preset, dtype, decoder_dtype, batches, num_batches, repeats, threads, backend,
          reference_device, sampling, profile, out):
    """Benchmark the exported runtime against the PyTorch reference sampler (ratio in the same run)."""
    from .bench import bench_command
    result = bench_command(checkpoint, model_dir, list(batches), num_batches, threads, repeats, sampling, backend,
                           preset, dtype, profile, reference_device, decoder_dtype)
    text = json.dumps(result, indent=2)
    if out:
        out.write_text(text + "\n")
    click.echo(text)
