"""`dnd info MODEL`: check a model (or engine) folder against its manifest and print what it holds, or summarise
a checkpoint.pt."""
import importlib
from pathlib import Path

import click

from ..backends import refusals, runnable
from ..model_folder.engine_index import load_engine_index
from ..model_folder.files import load_embeddings
from ..model_folder.manifest import load_manifest
from .flags import user_errors

SOURCE_KEYS = ("checkpoint", "checkpoint_sha256")  # the producer's record of the file exported (dnd_export)


def summary(model_dir: Path) -> str:
    """A short human-readable description of a verified model folder."""
    m = load_manifest(model_dir)
    load_embeddings(m)  # their headers, shapes and dtypes: what a Generator checks when it loads them
    labels = ", ".join(map(str, m.labels[:6])) + (", ..." if len(m.labels) > 6 else "")
    size = sum(e.bytes + sum(r.bytes for r in e.external_data) for e in m.files.values())
    guidance = "available" if m.null_class is not None else "unavailable (no null class)"
    answers = refusals(m.graphs)
    runs_on = ", ".join(runnable(m.graphs)) or "no backend here"
    lines = [
        f"{model_dir}: {m.format} v{m.version}, dtype {m.dtype}"
        + (f" (decoder {m.decoder_dtype})" if m.decoder_dtype else "") + f", opset {m.opset}",
        f"classes:  {len(m.labels)} ({labels}); guidance {guidance}",
        f"latent:   {m.latent['h']}x{m.latent['w']} cells x depth {m.depth}, vocab {m.model_config.get('vocab_size')}",
        f"image:    {m.image['height']}x{m.image['width']} RGB",
        "sampler:  " + ", ".join(f"{k}={v}" for k, v in m.sampler_defaults.items()),
        f"runs on:  {runs_on} (stage graphs v2, cache of {m.cache_length} positions)",
        *(f"not on:   {name}: {refusal}" for name, refusal in answers.items() if refusal is not None),
        f"files:    {len(m.files)} ({size / 2**20:.1f} MiB), sha256 verified, embedding tables checked",
        "producer: " + ", ".join(f"{k} {v}" for k, v in m.producer.items() if k not in SOURCE_KEYS),
    ]
    if "checkpoint" in m.producer:
        lines.append(f"exported from: {m.producer['checkpoint']} (sha256 {m.producer.get('checkpoint_sha256', '?')[:12]})")
    engines = load_engine_index(model_dir, m.stage_names + ["decoder"])
    if engines is not None:
        lines.append(f"engines:  TensorRT {engines.tensorrt_version}, up to {engines.max_rows} rows per call, "
                     "sha256 verified")
    return "\n".join(lines)


# a checkpoint.pt is read by torch, which dnd_sdk never imports: the summary comes from the train extra
CHECKPOINT_SUMMARY = ("dnd_training.checkpoint_info", "summary")


def checkpoint_summary(path: Path) -> str:
    module, attr = CHECKPOINT_SUMMARY
    try:
        return getattr(importlib.import_module(module), attr)(path)
    except ImportError as e:
        raise click.ClickException(f"{path} is a file: reading a checkpoint.pt needs the 'train' extra "
                                   f"(pip install 'dnd-sdk[train]'; {e}). A model folder needs nothing more.") from None


@click.command("info")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@user_errors
def info(model: Path) -> None:
    """Print what MODEL holds: a model folder (its files verified against manifest.json) or a checkpoint.pt."""
    click.echo(checkpoint_summary(model) if model.is_file() else summary(model))
