"""`dnd import`: checkpoints made by other code -> a dnd checkpoint.pt (thin over dnd_training.importers)."""
import json
from pathlib import Path

import click

from dnd_sdk.errors import InvalidInputError
from .official import PRESETS, RELEASES, ImportSettings, import_official, read_labels


@click.group("import")
def import_group():
    """Turn checkpoints made elsewhere into a dnd checkpoint.pt (then dnd-export it as usual)."""


def _positions(ctx, param, value):
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer indices such as 39,47, got {value!r}") from None


@import_group.command("official")
@click.argument("gpt_file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("tokenizer_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="checkpoint.pt to write.")
@click.option("--release", type=click.Choice(sorted(RELEASES)),
              help="A published model: fills in every setting and its sampling defaults.")
@click.option("--preset", type=click.Choice(list(PRESETS)), help="GPT size preset (layers, heads, width).")
@click.option("--gpt-args", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON file of the official ModelArgs fields, official names.")
@click.option("--pred-head-positions", callback=_positions, help="Layer index of each head, e.g. 39,47.")
@click.option("--num-classes", type=int, help="Class count (without the null class).")
@click.option("--class-dropout-prob", type=float, help="> 0 when the model has a null class (guidance).")
@click.option("--image-size", type=int, help="Image side in pixels. [default: the tokenizer's latent grid x 16]")
@click.option("--tokenizer-config", type=click.Path(dir_okay=False, path_type=Path),
              help="The tokenizer's config.yaml. [default: config.yaml beside TOKENIZER_FILE]")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Class names, one a line. [default: ImageNet names for ImageNet releases, else class ids]")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def official(gpt_file, tokenizer_file, output, release, preset, gpt_args, pred_head_positions, num_classes,
             class_dropout_prob, image_size, tokenizer_config, labels_file, force):
    """Import a published DnD-Transformer: its GPT file and RQ-VAE tokenizer file."""
    if output.exists() and not force:
        raise InvalidInputError(f"{output} exists; pass --force to replace it")
    args = None
    if gpt_args is not None:
        try:
            args = json.loads(gpt_args.read_text())
        except (OSError, ValueError) as e:
            raise InvalidInputError(f"--gpt-args {gpt_args}: not a readable JSON file ({e})") from None
    settings = ImportSettings(gpt_args=args, preset=preset, release=release, pred_head_positions=pred_head_positions,
                              num_classes=num_classes, class_dropout_prob=class_dropout_prob, image_size=image_size,
                              tokenizer_config=tokenizer_config,
                              labels=read_labels(labels_file) if labels_file else None)
    import_official(gpt_file, tokenizer_file, output, settings)
    click.echo(f"wrote {output}")
