"""`dnd bench [MODEL]`: images/s of the runtime vs the PyTorch reference on the same model and against the
floor the same run's measured rates allow, as a table (and JSON with -o/--output)."""
import json
from pathlib import Path

import click

from dnd_sdk.backends import BACKEND_CHOICES
from dnd_sdk.cli.flags import user_errors
from dnd_sdk.cli.options import sampler_options
from dnd_sdk.errors import InvalidInputError
from dnd_sdk.model_folder.schema import DECODER_DTYPES, DTYPES
from dnd_training.model import MODEL_CONFIGS


@click.command("bench")
@click.argument("model", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "model_option", type=click.Path(file_okay=False, path_type=Path), hidden=True,
              help="Same as MODEL (kept for older scripts).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="checkpoint.pt of the PyTorch reference. [default: the one MODEL was exported from, if it is "
                   "unchanged; else the runtime alone. Without MODEL: a random --preset model]")
@click.option("--preset", type=click.Choice(sorted(MODEL_CONFIGS)), default="tiny", show_default=True,
              help="Without MODEL and --checkpoint: this MODEL_CONFIGS preset with random weights.")
# bf16 folders run on TensorRT only, which needs dnd-build first
@click.option("--dtype", type=click.Choice([d for d in DTYPES if d != "bf16"]), default="fp32", show_default=True,
              help="Without MODEL: the export dtype of the temporary folder (dnd-export --dtype; int4-int8: int4 "
                   "feed-forward, int8 attention and heads).")
@click.option("--decoder-dtype", type=click.Choice(["auto", *DECODER_DTYPES]), default="auto", show_default=True,
              help="Without MODEL: the temporary folder's decoder precision (dnd-export --decoder-dtype).")
@click.option("--batch-size", "--batch", "batches", type=click.IntRange(min=1), multiple=True, default=(1, 16),
              show_default=True, help="Images per call; repeat it to time several (--batch is the same).")
@click.option("--num-batches", type=click.IntRange(min=1), default=4, show_default=True, help="Batches per timed run.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed runs per setting; the best counts.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads for both sides. 1, not all cores as elsewhere: both sides get the same, and figures "
                   "compare across machines.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="onnxruntime-cpu", show_default=True,
              help="The runtime's backend.")
@click.option("--reference-device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the PyTorch reference runs; cuda compares a GPU backend with PyTorch on the same GPU.")
@sampler_options(seed=False)
@click.option("--profile", is_flag=True, help="Also time stage calls, sampling and decoder, and rate them in GFLOP/s "
                                              "against this run's GEMM rate.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the full report here as JSON.")
@user_errors
def bench(model, model_option, checkpoint, preset, dtype, decoder_dtype, batches, num_batches, repeats, threads,
          backend, reference_device, sampling, profile, output):
    """Benchmark the runtime on MODEL (an exported folder) against the PyTorch reference sampler, in the same run.

    Prints a table of images/s of both sides, their ratio and the batch size, and each result against the floor
    that this run's measured weight-streaming and compute rates allow; -o FILE keeps the JSON."""
    from .bench import bench_command, table
    if model is not None and model_option is not None and model != model_option:
        raise InvalidInputError(f"MODEL {model} and --model {model_option} differ; give the model folder once")
    result = bench_command(checkpoint, model or model_option, list(batches), num_batches, threads, repeats,
                           sampling.given(), backend, preset, dtype, profile, reference_device, decoder_dtype,
                           notice=lambda text: click.echo(text, err=True))
    if output:
        output.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(table(result))
    if output:
        click.echo(f"\nJSON: {output}")
