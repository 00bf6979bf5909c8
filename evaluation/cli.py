"""`dnd eval ocr TARGET`: OCR accuracy of a model folder, a generated-image folder, a tokenizer, or the dataset.
`dnd eval sweep MODEL`: the same accuracy over a grid of sampling settings, to choose the model's defaults."""
import json
from pathlib import Path

import click

from dnd_sdk.cli.flags import refuse_flags_that_do_not_apply, user_errors
from dnd_sdk.cli.options import sampler_grid_options, sampler_options
from dnd_sdk.errors import InvalidInputError
from dnd_sdk.sampler import SETTINGS


@click.group("eval")
def evaluate():
    """Judge models, tokenizers, images or the dataset."""


# what each TARGET-specific flag of `dnd eval ocr` applies to; any other target refuses it
MODEL, IMAGES, TOKENIZER, DATASET = "a model folder", "an image folder", "a tokenizer", "--dataset"
OCR_FLAGS = {
    "per_class": (MODEL, TOKENIZER, DATASET), "num_classes": (TOKENIZER, DATASET), "seed": (MODEL, TOKENIZER, DATASET),
    "depth": (TOKENIZER,), "threads": (MODEL,), "save_images": (MODEL,),
    **{name: (MODEL,) for name in SETTINGS},
}


@evaluate.command("ocr")
@click.argument("target", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--dataset", is_flag=True, help="Judge the rendered dataset itself (the OCR ceiling).")
@click.option("--per-class", type=click.IntRange(min=1), default=4, show_default=True, help="Images per class.")
@click.option("--num-classes", type=int,
              help="--dataset or a tokenizer: judge the first N built-in words [default: 32; a tokenizer's own words].")
@click.option("--seed", type=int, default=1000, show_default=True, help="Seed of the sampled or rendered images.")
@click.option("--depth", type=int, help="Tokenizer: decode from the first DEPTH codes only.")
@sampler_options(seed=False)
@click.option("--threads", type=click.IntRange(min=1), help="Model: ONNX Runtime threads. [default: all cores]")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the full result here as JSON, with the per-image list (index, label, OCR text, PNG).")
@click.option("--save-images", type=click.Path(file_okay=False, path_type=Path),
              help="Model: also save the judged images here, so the per-image list points at them.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def ocr(target, dataset, per_class, num_classes, seed, depth, sampling, threads, output, save_images, quiet):
    """TARGET: an exported model folder, a `dnd generate` folder, or a tokenizer.pt / checkpoint.pt.

    Prints a summary; -o FILE keeps every image's result."""
    from dnd_training.data import load_words
    from . import evaluate as ev
    progress = not quiet
    if dataset and target is not None:
        raise InvalidInputError(f"give a TARGET or --dataset, not both (got {target} and --dataset)")
    if dataset or target is not None:
        kind = DATASET if dataset else MODEL if (target / "manifest.json").is_file() else \
            IMAGES if target.is_dir() else TOKENIZER
        refuse_flags_that_do_not_apply(click.get_current_context(), kind, OCR_FLAGS)
    if dataset:
        result = ev.eval_dataset(num_classes=32 if num_classes is None else num_classes, per_class=per_class, seed=seed,
                                 progress=progress)
    elif target is None:
        raise InvalidInputError("give a TARGET (model folder, image folder, tokenizer.pt) or --dataset")
    elif (target / "manifest.json").is_file():
        result = ev.eval_model(target, per_class, seed, sampling.given(), threads, save_images, progress)
    elif target.is_dir():
        result = ev.eval_images(target, progress)
    else:
        labels = None if num_classes is None else load_words(num_classes=num_classes)
        result = ev.eval_tokenizer(target, labels, per_class=per_class, seed=seed, depth=depth, progress=progress)
    if output:
        output.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(ev.summary(result))
    click.echo(f"per-image results: {output}" if output else "(-o FILE writes the per-image results)")


@evaluate.command("sweep")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@sampler_grid_options(cfg_scale=(1.0, 1.5, 2.0, 3.0), temperature=(0.0, 0.3, 0.6, 1.0))
@click.option("--per-class", type=click.IntRange(min=1), default=4, show_default=True,
              help="Images per class and setting.")
@click.option("--seed", type=int, default=1000, show_default=True, help="Seed of the sampled images (the same for every setting).")
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime threads. [default: all cores]")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Also write the JSON here.")
@user_errors
def sweep(model_dir, cfg_scales, temperatures, per_class, seed, threads, output):
    """OCR accuracy of an exported model at every (cfg scale, temperature) pair, best first."""
    from . import evaluate as ev
    if not (model_dir / "manifest.json").is_file():
        raise InvalidInputError(f"{model_dir} has no manifest.json; give a folder written by dnd-export")
    results = ev.sweep_model(model_dir, cfg_scales, temperatures, per_class, seed, threads)
    rows = [{"cfg_scale": r["sampling"]["cfg_scale"], "temperature": r["sampling"]["temperature"],
             "accuracy": r["accuracy"], "cer": r["cer"], "count": r["count"]} for r in results]
    text = json.dumps(rows, indent=2)
    if output:
        output.write_text(text + "\n")
    click.echo(text)
    for r in rows:
        click.echo(f"cfg {r['cfg_scale']:<4g} T {r['temperature']:<4g} exact match {r['accuracy']:.1%} "
                   f"of {r['count']}, CER {r['cer']:.3f}", err=True)
    best = rows[0]
    click.echo(f"best: dnd train set-defaults CHECKPOINT --cfg-scale {best['cfg_scale']:g} "
               f"--temperature {best['temperature']:g}", err=True)
