"""`dnd-export CHECKPOINT -o DIR [--dtype fp32|fp16|bf16|int8|int4|int4-int8] [--decoder-dtype auto|fp32|fp16|int8] [--opset N]
[--check] [--force]`."""
import logging
import sys
import time

import click

from dnd_sdk.cli.flags import user_errors
from dnd_sdk.model_folder.schema import DECODER_DTYPES, DTYPES


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--dtype", type=click.Choice(DTYPES), default="fp32", show_default=True,
              help="Precision of the stage graphs: fp32/fp16/bf16 weights and KV cache (bf16 for TensorRT only), "
                   "or int8/int4 weights with each row's activations quantized on its own (ONNX Runtime only); "
                   "int4-int8 mixes them: int4 feed-forward weights, int8 attention and heads, which keeps some of the "
                   "images int4 loses (not all: docs/architecture.md, Mixed precision). Hidden state and logits stay "
                   "float32.")
@click.option("--decoder-dtype", type=click.Choice(["auto", *DECODER_DTYPES]), default="auto", show_default=True,
              help="The image decoder's precision. auto: as --dtype (fp32 for bf16, int8 for int8/int4/int4-int8). int8 "
                   "(ONNX Runtime only, so not with --dtype bf16) decodes about twice as fast on a CPU; the tokens "
                   "stay the same.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (14..20).")
@click.option("--check", is_flag=True, help="Compare the graphs with PyTorch (Polygraphy) and fail past tolerance.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists and is not empty.")
@user_errors
def main(checkpoint, out_dir, dtype, decoder_dtype, opset, check, force):
    """Export CHECKPOINT to an ONNX model folder that `dnd generate` and `dnd-build` read."""
    from .export import export_model  # torch loads here, after --help has been answered

    # the library reports progress and --check errors through logging; show them on stdout
    log, handler = logging.getLogger("dnd_export"), logging.StreamHandler(sys.stdout)
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    start = time.perf_counter()
    try:
        path = export_model(checkpoint, out_dir, dtype=dtype, opset=opset, check=check, force=force,
                            decoder_dtype=decoder_dtype)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    size = sum(p.stat().st_size for p in path.iterdir())
    click.echo(f"Wrote {path} ({dtype}, {size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
