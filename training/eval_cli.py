"""`dnd eval ocr TARGET`: OCR accuracy of a model folder, a generated-image folder, a tokenizer, or the dataset."""
import json
from pathlib import Path

import click

from dnd_sdk.errors import InvalidInputError


@click.group("eval")
def evaluate():
    """Judge models, tokenizers, images or the dataset."""


@evaluate.command("ocr")
@click.argument("target", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--dataset", is_flag=True, help="Judge the rendered dataset itself (the OCR ceiling).")
@click.option("--per-class", type=int, default=4, show_default=True, help="Images per class.")
@click.option("--num-classes", type=int, default=32, show_default=True, help="--dataset: the first N built-in words.")
@click.option("--seed", type=int, default=1000, show_default=True, help="Seed of the sampled or rendered images.")
@click.option("--depth", type=int, help="Tokenizer: decode from the first DEPTH codes only.")
@click.option("--cfg-scale", type=float, help="Model: guidance scale [default: the model's].")
@click.option("--temperature", type=float, help="Model: temperature [default: the model's].")
@click.option("--threads", type=int, help="Model: ONNX Runtime threads.")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the JSON here.")
def ocr(target, dataset, per_class, num_classes, seed, depth, cfg_scale, temperature, threads, out):
    """TARGET: an exported model folder, a `dnd generate` folder, or a tokenizer.pt / checkpoint.pt."""
    from . import evaluate as ev
    sampling = {k: v for k, v in (("cfg_scale", cfg_scale), ("temperature", temperature)) if v is not None}
    if dataset:
        result = ev.eval_dataset(num_classes=num_classes, per_class=per_class, seed=seed)
    elif target is None:
        raise InvalidInputError("give a TARGET (model folder, image folder, tokenizer.pt) or --dataset")
    elif (target / "manifest.json").is_file():
        result = ev.eval_model(target, per_class, seed, sampling, threads)
    elif target.is_dir():
        result = ev.eval_images(target)
    else:
        result = ev.eval_tokenizer(target, per_class=per_class, seed=seed, depth=depth)
    text = json.dumps(result, indent=2)
    if out:
        out.write_text(text + "\n")
    click.echo(text)
    click.echo(f"{result['kind']}: exact match {result['accuracy']:.1%} of {result['count']}, CER {result['cer']:.3f}"
               + (f", PSNR {result['psnr']:.2f} dB" if "psnr" in result else ""), err=True)
