"""Image files: atomic PNG writes, contact sheets and the `arr_0` npz that FID evaluators read."""
import math
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .folders import TMP_SUFFIX, atomic_write  # noqa: F401 (TMP_SUFFIX: batch.py finds leftovers by it)


def to_pil(images: np.ndarray) -> list:
    """uint8 [n, H, W, 3] -> n RGB PIL images."""
    return [Image.fromarray(np.ascontiguousarray(im), mode="RGB") for im in images]


def save_png(image: Image.Image, path: str | Path, tmp_tag: str = "") -> None:
    atomic_write(path, lambda f: image.save(f, format="PNG"), tmp_tag)


def _font(size: int) -> Any:
    """DejaVu Sans where it is installed, else Pillow's built-in font: captions never need a font package."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default()


def contact_sheet(images: list, cols: int, pad: int = 2, captions: Optional[list] = None,
                  background: str = "white", column_titles: Optional[list] = None) -> Image.Image:
    """Images of one size laid out row by row, `cols` per row, `pad` pixels of `background` between them;
    with `captions` (one string per image), each cell gets its caption in a strip below it, clipped to the
    cell's width; with `column_titles` (one string per column), a strip above the first row names each column."""
    w, h = images[0].size
    font_size = max(9, min(14, w // 8))
    strip = font_size + 4 if captions else 0
    header = font_size + 4 + pad if column_titles else 0
    rows = math.ceil(len(images) / cols)
    sheet = Image.new("RGB", (cols * (w + pad) + pad, header + rows * (h + strip + pad) + pad), background)
    font = _font(font_size) if captions or column_titles else None

    def text_strip(text: object) -> Image.Image:
        label = Image.new("RGB", (w, font_size + 4), "white")
        ImageDraw.Draw(label).text((1, 1), str(text), fill="black", font=font)
        return label

    for c, title in enumerate(column_titles or ()):
        sheet.paste(text_strip(title), (pad + c * (w + pad), pad))
    for i, im in enumerate(images):
        x, y = pad + (i % cols) * (w + pad), header + pad + (i // cols) * (h + strip + pad)
        sheet.paste(im, (x, y))
        if captions:
            sheet.paste(text_strip(captions[i]), (x, y + h))
    return sheet


def write_npz(path: str | Path, images: Iterable, shape: tuple, tmp_tag: str = "") -> None:
    """Write `arr_0` uint8 `shape` [n, H, W, 3] as numpy.savez would, streamed one image at a time.

    Streaming keeps memory flat for 50k-image FID sets; the fixed zip timestamp keeps the file
    identical from run to run.
    """
    header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": tuple(shape)}

    def write(f: IO[bytes]) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open(zipfile.ZipInfo("arr_0.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, header)
                for im in images:
                    member.write(np.ascontiguousarray(im, dtype=np.uint8).tobytes())

    atomic_write(path, write, tmp_tag)
