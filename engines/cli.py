"""`dnd-build MODEL_DIR -o OUT [--max-batch N] [--timing-cache FILE] [--force]`."""
import logging
import sys
import time

import click

from dnd_sdk.cli.flags import user_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Engine folder to write.")
@click.option("--max-batch", type=int, default=16, show_default=True,
              help="Images per call the engines take (guidance runs 2 rows per image).")
@click.option("--timing-cache", type=click.Path(dir_okay=False),
              help="TensorRT timing cache file: read if present, updated after the build.")
@click.option("--workspace-gib", type=float, default=8.0, show_default=True, help="Builder scratch memory limit.")
@click.option("--force", is_flag=True, help="Replace the --out folder if it exists and is not empty.")
@user_errors
def main(model_dir, out_dir, max_batch, timing_cache, workspace_gib, force):
    """Build TensorRT engines for the exported model in MODEL_DIR (a `dnd-export` folder)."""
    from .build import BuildConfig, build_engines

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    start = time.perf_counter()
    config = BuildConfig(max_batch=max_batch, workspace_gib=workspace_gib, timing_cache=timing_cache)
    path = build_engines(model_dir, out_dir, config, force=force)
    click.echo(f"Wrote {path} (up to {max_batch} images per call) in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
