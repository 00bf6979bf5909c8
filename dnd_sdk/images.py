"""Image files: atomic PNG writes, contact sheets and the `arr_0` npz that FID evaluators read."""
import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from .folders import usual_mode

TMP_SUFFIX = ".tmp"


def to_pil(images: np.ndarray) -> list:
    """uint8 [n, H, W, 3] -> n RGB PIL images."""
    return [Image.fromarray(np.ascontiguousarray(im), mode="RGB") for im in images]


def atomic_write(path, write, tmp_tag: str = "", keep_existing: bool = False) -> None:
    """Call write(file) on a temporary file beside `path`, then rename it into place.

    A reader (or a resumed run) sees either the whole file or none. Temporary files are named
    `.{tmp_tag}{name}.*.tmp`, so a restarted job can find and delete only its own leftovers.
    With keep_existing, a file already at `path` wins, even one that appears while this one
    is written (os.link never replaces).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{tmp_tag}{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        usual_mode(tmp)
        with os.fdopen(fd, "wb") as f:
            write(f)
        if not keep_existing:
            os.replace(tmp, path)
        elif not path.exists():
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_png(image: Image.Image, path, tmp_tag: str = "") -> None:
    atomic_write(path, lambda f: image.save(f, format="PNG"), tmp_tag)


def contact_sheet(images: list, cols: int, pad: int = 2) -> Image.Image:
    """Images of one size laid out row by row, `cols` per row, on a white background."""
    w, h = images[0].size
    rows = math.ceil(len(images) / cols)
    sheet = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), "white")
    for i, im in enumerate(images):
        sheet.paste(im, (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
    return sheet


def write_npz(path, images, shape: tuple, tmp_tag: str = "") -> None:
    """Write `arr_0` uint8 `shape` [n, H, W, 3] as numpy.savez would, streamed one image at a time.

    Streaming keeps memory flat for 50k-image FID sets; the fixed zip timestamp keeps the file
    identical from run to run.
    """
    header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": tuple(shape)}

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open(zipfile.ZipInfo("arr_0.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, header)
                for im in images:
                    member.write(np.ascontiguousarray(im, dtype=np.uint8).tobytes())

    atomic_write(path, write, tmp_tag)
