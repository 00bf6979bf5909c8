"""`dnd generate MODEL --num N --out DIR`: a thin wrapper over `dnd_sdk.batch.run_batch`
(`dnd_sdk.ray_batch.run_batch_ray` with --ray)."""
from pathlib import Path
from typing import Any, Optional

import click

from ..batch import BatchJob, RunInterrupted, run_batch
from ..generator import Generator
from ..sampler import SamplingParams
from .options import backend_options, ray_options, sampler_options


def _shard(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected I/N such as 0/4, got {value!r}") from None
    return i, n


def _labels(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[list[str]]:
    if value is None:
        return None
    labels = [x.strip() for x in value.split(",")]
    if not all(labels):
        raise click.BadParameter(f"empty entry in {value!r}; give class names or ids separated by single commas")
    return labels


@click.command("generate")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--num", type=int, help="How many images. [default: one per --labels entry]")
@click.option("--labels", callback=_labels, help="Comma-separated class names or ids; image i gets entry i mod count. "
              "[default: image i gets class i mod num_classes]")
@click.option("--per-class", type=int, help="K images of every class (num = K x classes).")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Images per backend call.")
@sampler_options
@click.option("--shard", default="0/1", show_default=True, callback=_shard,
              help="I/N: make only the I-th (0-based) of N disjoint parts of the index range.")
@click.option("--npz", is_flag=True, help="Also write samples.npz (arr_0: uint8 NHWC), as FID evaluators read.")
@click.option("--grid", is_flag=True, help="Also write grid.png, a contact sheet of the first 256 images.")
@click.option("--captions/--no-captions", default=None,
              help="Label under each grid.png cell. [default: on when the model has more than one class]")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@backend_options
@ray_options
def generate(model: Path, num: Optional[int], labels: Optional[list[str]], per_class: Optional[int], out: Path,
             batch_size: int, seed: int, sampling: SamplingParams, shard: tuple[int, int], npz: bool, grid: bool,
             captions: Optional[bool], quiet: bool, backend: dict, ray: Optional[dict]) -> None:
    """Sample images from MODEL into OUT: 000000.png ..., metadata.jsonl, run.json.

    Killed at any point, the same command resumes where it stopped. Shards may share OUT.
    With --ray, Ray workers sample and this process writes the same files.
    """
    if captions is not None and not grid:
        raise click.UsageError("--captions/--no-captions apply to grid.png: add --grid")
    job = BatchJob(num=num, labels=labels, per_class=per_class, seed=seed, sampling=sampling,
                   batch_size=batch_size, shard=shard, npz=npz, grid=grid, captions=captions)
    try:
        if ray is None:
            gen = Generator(model, **backend)
            s, where = run_batch(gen, out, job, progress=not quiet), f"on {gen.backend_name}"
        else:
            from ..ray_batch import RayOptions, run_batch_ray  # ray itself is imported only when a run starts
            s = run_batch_ray(model, out, job, RayOptions(**ray, **backend), progress=not quiet)
            where = f"on {len(s.workers)} Ray worker(s)"
    except RunInterrupted as e:
        click.echo(f"\nInterrupted: {e.done} of {e.total} images are done in {e.out}. Run the same command again "
                   "to make the rest; nothing is made twice.", err=True)
        raise SystemExit(130) from None  # 128 + SIGINT, as a shell reports a Ctrl-C
    state = "complete" if s.complete else "this shard done, others still missing"
    click.echo(f"{out}: {s.made} made, {s.skipped} already there ({state}) {where} in {s.seconds:.1f}s")
    if ray is not None:
        _echo_workers(s)


def _echo_workers(s: Any) -> None:
    rate = s.made / s.sampling_seconds if s.sampling_seconds else 0.0
    click.echo(f"  sampling {s.sampling_seconds:.1f}s, {rate:.1f} images/s in total"
               + (f"; {s.lost} workers died and were replaced" if s.lost else ""))
    for w in s.workers:
        click.echo(f"  {w.name} on {w.node} ({w.backend}): {w.images} images, {w.images_per_s:.1f} images/s")
