"""OCR evaluation of generated images, tokenizer reconstructions (rOCR, PSNR) and the dataset itself.

    dnd eval ocr out/model --per-class 4        # generated images, the model's default sampling
    dnd eval sweep out/model --cfg-scale 1 --cfg-scale 2 --temperature 0 --temperature 0.5
    dnd eval ocr out/samples                    # a `dnd generate` folder (labels from metadata.jsonl)
    dnd eval ocr runs/tok/tokenizer.pt          # rOCR + PSNR: encode, decode, read
    dnd eval ocr --dataset --num-classes 32     # the OCR ceiling of the rendered words
"""
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dnd_sdk.batch import check_out_folder, png_name
from dnd_sdk.errors import InvalidInputError
from dnd_sdk.folders import open_regular
from dnd_training.data import WordImageDataset, load_words
from dnd_training.pixels import to_image, to_tensor
from .ocr import read_words, score


def _report(kind: str, images, truths, pngs=None, progress: bool = False, **extra) -> dict:
    """Scores plus the per-image list: index, label, what OCR read, and the PNG it read (None when the
    image was judged in memory). progress: a tqdm bar while tesseract reads."""
    predictions = read_words(images, progress=progress)
    result = {"kind": kind, **score(predictions, truths).as_dict(), **extra}
    pngs = pngs or [None] * len(images)
    result["images"] = [{"index": i, "label": t, "read": p, "png": None if f is None else str(f)}
                        for i, (t, p, f) in enumerate(zip(truths, predictions, pngs))]
    return result


def summary(result: dict) -> str:
    """Two lines for a terminal: the scores, and the weakest classes."""
    line = (f"{result['kind']}: exact match {result['accuracy']:.1%} of {result['count']}, CER {result['cer']:.3f}"
            + (f", PSNR {result['psnr']:.2f} dB" if "psnr" in result else ""))
    weakest = sorted(result["per_class"].items(), key=lambda kv: kv[1])[:5]
    return line + "\nweakest:  " + ", ".join(f"{word} {acc:.0%}" for word, acc in weakest)


def eval_model(model_dir, per_class: int = 4, seed: int = 1000, sampling=None, threads=None, image_dir=None,
               progress: bool = False) -> dict:
    """Generate `per_class` images of every class with the model's defaults (or `sampling`) and read them;
    with image_dir, the judged images are also saved there (000000.png ...)."""
    from dnd_sdk import Generator
    from dnd_sdk.images import save_png
    if image_dir is not None:
        _check_image_dir(Path(image_dir), model_dir)
    with Generator(model_dir, threads=threads) as gen:
        labels = [c for c in range(gen.num_classes) for _ in range(per_class)]
        images = gen.sample(labels=labels, seed=seed, **(sampling or {}))
        defaults = dict(gen.manifest.sampler_defaults)
    pngs = None
    if image_dir is not None:
        Path(image_dir).mkdir(parents=True, exist_ok=True)
        pngs = [Path(image_dir) / png_name(i) for i in range(len(images))]
        for im, path in zip(images, pngs):
            save_png(im, path)
    return _report("generated", images, [gen.labels[c] for c in labels], pngs, progress, seed=seed,
                   sampling={**defaults, **(sampling or {})})


def _check_image_dir(image_dir: Path, model_dir) -> None:
    """The judged images go to a new or empty folder outside the model folder: 000000.png ... written over a
    `dnd generate` run's images would replace them with others that its resume takes for its own."""
    check_out_folder(image_dir, model_dir)
    if image_dir.is_dir() and any(image_dir.iterdir()):
        raise InvalidInputError(f"{image_dir} is not empty; the judged images go to a new or empty folder, so "
                                "that no file already there is replaced. Choose another folder.")


def sweep_model(model_dir, cfg_scales, temperatures, per_class: int = 4, seed: int = 1000, threads=None) -> list:
    """eval_model at every (cfg_scale, temperature) pair, on the same seed; best exact match first."""
    results = [eval_model(model_dir, per_class, seed, {"cfg_scale": c, "temperature": t}, threads)
               for c in cfg_scales for t in temperatures]
    return sorted(results, key=lambda r: (-r["accuracy"], r["cer"]))


def eval_images(folder, progress: bool = False) -> dict:
    """Read a `dnd generate` output folder; the truth of each PNG comes from metadata.jsonl."""
    rows = _metadata(Path(folder))
    images, pngs = [], [Path(folder) / png_name(r["index"]) for r in rows]
    for path in pngs:
        images.append(_image(path))
    return _report("images", images, [r["label_name"] for r in rows], pngs, progress)


NOT_GENERATED = "give a finished `dnd generate` output folder, or rerun `dnd generate` to make it again"


def _metadata(folder: Path) -> list:
    """The rows of metadata.jsonl, each checked to name an image index and a class name."""
    f = open_regular(folder / "metadata.jsonl", NOT_GENERATED)
    if f is None:
        raise InvalidInputError(f"{folder}: no metadata.jsonl; {NOT_GENERATED}")
    with f:
        lines = f.read().decode(errors="replace").splitlines()
    rows = []
    for number, line in enumerate((x for x in lines if x.strip()), 1):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
        if not (isinstance(row, dict) and isinstance(row.get("index"), int) and not isinstance(row["index"], bool)
                and row["index"] >= 0 and isinstance(row.get("label_name"), str)):
            raise InvalidInputError(f"{folder / 'metadata.jsonl'}: line {number} is not a row of `dnd generate` (an "
                                    f"object with an int index and a label_name string); {NOT_GENERATED}")
        rows.append(row)
    return rows


def _image(path: Path) -> Image.Image:
    """One PNG of the folder as RGB, decoded whole now (so its file closes); anything else is refused by name."""
    f = open_regular(path, NOT_GENERATED)
    try:
        with f or open(path, "rb") as opened, Image.open(opened) as im:
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise InvalidInputError(f"{path}: not a readable image ({type(e).__name__}); {NOT_GENERATED}") from None


def _dataset(labels, per_class: int, seed: int, preset: str) -> WordImageDataset:
    return WordImageDataset(labels, preset=preset, seed=seed, length=len(labels) * per_class)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = torch.mean((a.clamp(-1, 1) - b.clamp(-1, 1)) ** 2).item()
    return float(10 * np.log10(4.0 / max(mse, 1e-12)))


@torch.no_grad()
def eval_tokenizer(tokenizer_path, labels=None, per_class: int = 4, seed: int = 1000, preset: str = "clean",
                   depth=None, progress: bool = False) -> dict:
    """rOCR and PSNR: render held-out words, encode, decode with the first `depth` codes, read."""
    from dnd_training.tokenizer_file import load_tokenizer
    tokenizer, meta = load_tokenizer(tokenizer_path)
    labels = list(labels or meta.get("labels") or load_words(num_classes=32))
    ds = _dataset(labels, per_class, seed, preset)
    originals = torch.stack([ds[i][0] for i in range(len(ds))])
    codes = torch.cat([tokenizer.encode(x) for x in originals.split(64)])
    depth = codes.shape[-1] if depth is None else depth
    if not 1 <= depth <= codes.shape[-1]:
        raise InvalidInputError(f"depth must be in 1..{codes.shape[-1]} (this tokenizer's depth), got {depth}")
    recon = torch.cat([tokenizer.decode(c[..., :depth]) for c in codes.split(64)])
    images = [to_image(x) for x in recon]
    # PSNR of the uint8 images the user sees
    seen = torch.stack([to_tensor(im) for im in images])
    return _report("reconstructed", images, [ds.labels[ds.label_of(i)] for i in range(len(ds))], None, progress,
                   psnr=psnr(seen, originals), depth=depth, seed=seed)


def eval_dataset(labels=None, num_classes: int = 32, per_class: int = 4, seed: int = 1000, preset: str = "clean",
                 progress: bool = False) -> dict:
    """The OCR ceiling: how often tesseract reads the rendered training words themselves."""
    labels = list(labels or load_words(num_classes=num_classes))
    ds = _dataset(labels, per_class, seed, preset)
    return _report("dataset", [ds.render(i) for i in range(len(ds))],
                   [ds.labels[ds.label_of(i)] for i in range(len(ds))], None, progress, seed=seed)
