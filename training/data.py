"""Class-conditional synthetic word images: each class is a word, rendered with Pillow.

    ds = WordImageDataset(load_words(num_classes=4), preset="clean", seed=0, length=1000)
    image, label = ds[7]            # image [3, 32, 128] float in [-1, 1], label = 7 % 4
    ds.render(7).save("seven.png")  # the same sample as a PIL image

Sample i of a dataset with seed s is a pure function of (s, i): its random draws come
from numpy's Generator seeded with SeedSequence([s, i]), and its class is i % num_classes.
`build_dataset(DataConfig)` also builds the image-folder dataset (dnd_training.image_folder).
"""
import dataclasses
import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from dnd_sdk.errors import InvalidInputError
from .image_folder import ImageFolderDataset
from .pixels import to_tensor

DEJAVU_DIR = Path("/usr/share/fonts/truetype/dejavu")


@dataclass
class RenderStyle:
    """How much a rendered word varies. Sizes are in pixels for a 32-pixel-high canvas."""
    fonts: list = field(default_factory=lambda: ["DejaVuSans.ttf"])
    size_range: tuple = (17, 19)
    jitter: Optional[int] = 2  # max offset from the centre in pixels; None = anywhere the word fits
    random_colours: bool = False  # False: black on white
    max_rotation: float = 0.0  # degrees
    max_blur: float = 0.0  # Gaussian blur radius
    noise_std: float = 0.0  # additive pixel noise, in units of the 0..255 range / 255


PRESETS = {
    # what a small model can learn on a 2-core machine (calibration notes)
    "clean": RenderStyle(),
    "varied": RenderStyle(
        fonts=["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
               "DejaVuSansMono.ttf", "DejaVuSansCondensed.ttf", "DejaVuSans-Oblique.ttf"],
        size_range=(14, 21), jitter=None, random_colours=True, max_rotation=3.0, max_blur=0.6, noise_std=0.03),
}


def load_words(words=None, words_file=None, num_classes: Optional[int] = None) -> list:
    """Class names: a given list, a file (one word per line), or the built-in list; the first `num_classes`."""
    if words is None:
        text = Path(words_file).read_text() if words_file else \
            resources.files("dnd_training").joinpath("words.txt").read_text()
        words = [w.strip() for w in text.splitlines() if w.strip()]
    words = [str(w) for w in words]
    if len(set(words)) != len(words):
        raise InvalidInputError(f"the word list repeats words {sorted({w for w in words if words.count(w) > 1})}; "
                                "every class needs its own word")
    if num_classes is not None:
        if not 0 < num_classes <= len(words):
            raise InvalidInputError(f"num_classes={num_classes}, but the word list has {len(words)} words; "
                                    "give a longer list (data.words or data.words_file) or fewer classes")
        words = words[:num_classes]
    return words


@functools.lru_cache(maxsize=256)
def _font(name: str, size: int):
    path = DEJAVU_DIR / name
    if path.is_file():
        return ImageFont.truetype(str(path), size)
    # no fonts-dejavu-core: Pillow's built-in scalable font still gives readable words
    return ImageFont.load_default(size=size)


def _colours(rng: np.random.Generator, random_colours: bool):
    if not random_colours:
        return (0, 0, 0), (255, 255, 255)
    while True:  # redraw until the word stands out from the background
        fg, bg = rng.integers(0, 256, size=(2, 3))
        if abs(int(fg.mean()) - int(bg.mean())) >= 100:
            return tuple(int(c) for c in fg), tuple(int(c) for c in bg)


def _word_layer(word: str, font, fg) -> Image.Image:
    """The word alone on a transparent layer cropped to its ink."""
    left, top, right, bottom = font.getbbox(word)
    layer = Image.new("RGBA", (right - left + 2, bottom - top + 2), fg + (0,))
    ImageDraw.Draw(layer).text((1 - left, 1 - top), word, font=font, fill=fg + (255,))
    return layer.crop(layer.getbbox())


def render_word(word: str, rng: np.random.Generator, style: RenderStyle, height: int = 32, width: int = 128,
                margin: int = 2) -> Image.Image:
    """Render one word with random style draws from `rng`; the ink always lies inside the canvas."""
    scale = height / 32  # sizes in a style are for a 32-pixel-high canvas
    font_name = style.fonts[rng.integers(len(style.fonts))]
    size = int(round(rng.integers(style.size_range[0], style.size_range[1] + 1) * scale))
    fg, bg = _colours(rng, style.random_colours)
    angle = rng.uniform(-style.max_rotation, style.max_rotation) if style.max_rotation else 0.0
    while True:  # shrink the font until the (rotated) word fits inside the margins
        layer = _word_layer(word, _font(font_name, size), fg)
        if angle:
            layer = layer.rotate(angle, resample=Image.BICUBIC, expand=True)
        w, h = layer.size
        if (w <= width - 2 * margin and h <= height - 2 * margin) or size <= 6:
            break
        size -= 1
    free_x, free_y = max(width - 2 * margin - w, 0), max(height - 2 * margin - h, 0)
    if style.jitter is None:
        x, y = margin + rng.integers(free_x + 1), margin + rng.integers(free_y + 1)
    else:
        j = style.jitter
        x = margin + int(np.clip(free_x // 2 + rng.integers(-j, j + 1), 0, free_x))
        y = margin + int(np.clip(free_y // 2 + rng.integers(-j, j + 1), 0, free_y))
    image = Image.new("RGB", (width, height), bg)
    image.paste(layer, (x, y), layer)
    if style.max_blur:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, style.max_blur)))
    if style.noise_std:
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 255 * style.noise_std, (height, width, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    return image


class WordImageDataset(torch.utils.data.Dataset):
    def __init__(self, words: list, preset="clean", seed: int = 0, length: Optional[int] = None,
                 height: int = 32, width: int = 128):
        if isinstance(preset, str) and preset not in PRESETS:
            raise InvalidInputError(f"unknown render preset {preset!r}; choose one of {sorted(PRESETS)}")
        self.words, self.seed, self.height, self.width = list(words), int(seed), int(height), int(width)
        self.style = PRESETS[preset] if isinstance(preset, str) else preset
        self.length = len(self.words) if length is None else int(length)
        self.labels = self.words

    def __len__(self):
        return self.length

    def label_of(self, i: int) -> int:
        return i % len(self.words)

    def render(self, i: int) -> Image.Image:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(i)]))
        return render_word(self.words[self.label_of(i)], rng, self.style, self.height, self.width)

    def __getitem__(self, i):
        return to_tensor(self.render(i)), self.label_of(i)


@dataclass
class DataConfig:
    kind: str = "words"  # "words" (synthetic) or "folder" (one sub-folder per class)
    preset: str = "clean"  # words: "clean" or "varied"
    style: dict = field(default_factory=dict)  # words: RenderStyle fields that override the preset's
    height: int = 32
    width: int = 128
    words: Optional[list] = None  # words: explicit class names; None = words_file or the built-in list
    words_file: Optional[str] = None
    num_classes: Optional[int] = None  # words: keep the first N words
    root: Optional[str] = None  # folder: the data folder
    seed: int = 0
    length: Optional[int] = None  # words: samples per epoch (default one per class)


def build_dataset(config: DataConfig, length: Optional[int] = None):
    """The dataset a DataConfig describes; `length` overrides config.length for synthetic words."""
    if config.kind == "words":
        words = load_words(config.words, config.words_file, config.num_classes)
        if config.preset not in PRESETS:
            raise InvalidInputError(f"unknown data.preset {config.preset!r}; choose one of {sorted(PRESETS)}")
        try:
            style = dataclasses.replace(PRESETS[config.preset], **config.style)
        except TypeError:
            raise InvalidInputError(f"data.style {sorted(config.style)} has unknown entries; RenderStyle fields are "
                                    f"{[f.name for f in dataclasses.fields(RenderStyle)]}") from None
        return WordImageDataset(words, style, config.seed, length or config.length, config.height, config.width)
    if config.kind == "folder":
        if not config.root:
            raise InvalidInputError("data.kind is 'folder' but data.root is not set; give the folder with one "
                                    "sub-folder per class (--set data.root=PATH)")
        return ImageFolderDataset(config.root, config.height, config.width)
    raise InvalidInputError(f"unknown data.kind {config.kind!r}; use 'words' or 'folder'")
