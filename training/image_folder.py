"""A user's own images: one sub-folder per class (sorted names = class ids), any format Pillow reads.

    ds = ImageFolderDataset("my_data/", height=32, width=128)
    image, label = ds[0]         # [3, H, W] in [-1, 1], class id

Files Pillow cannot identify or verify are reported (a logging warning naming the file) and
left out when the dataset is built; a file that still fails to decode later is reported
and replaced by the next readable one, so an epoch never stops halfway.
"""
import logging
from pathlib import Path

import torch
from PIL import Image

from dnd_sdk.errors import InvalidInputError
from .pixels import to_tensor

log = logging.getLogger(__name__)


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()  # reads the headers and checksums without decoding the pixels
        return True
    except Exception as e:  # Pillow raises many types for broken files; any of them means "skip"
        log.warning("skipping unreadable image %s: %s", path, e)
        return False


class ImageFolderDataset(torch.utils.data.Dataset):
    def __init__(self, root, height: int = 32, width: int = 128):
        root = Path(root)
        if not root.is_dir():
            raise InvalidInputError(f"image folder {root} does not exist; give a folder with one sub-folder per class")
        self.height, self.width = int(height), int(width)
        self.labels = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not self.labels:
            raise InvalidInputError(f"{root} has no sub-folders; put each class's images in a sub-folder named after it")
        extensions = {ext.lower() for ext in Image.registered_extensions()}
        self.samples = []
        for label, name in enumerate(self.labels):
            files = sorted(p for p in (root / name).iterdir() if p.is_file() and p.suffix.lower() in extensions)
            self.samples += [(p, label) for p in files if _readable(p)]
        if not self.samples:
            raise InvalidInputError(f"{root}: no readable images in {self.labels}; "
                                    f"supported extensions include .png, .jpg, .webp, .bmp")

    def __len__(self):
        return len(self.samples)

    def label_of(self, i: int) -> int:
        return self.samples[i][1]

    def load(self, i: int) -> Image.Image:
        path = self.samples[i][0]
        with Image.open(path) as image:
            return image.convert("RGB").resize((self.width, self.height), Image.BICUBIC)

    def __getitem__(self, i):
        for j in range(len(self.samples)):  # a file that broke after the scan: take the next good one
            k = (i + j) % len(self.samples)
            try:
                return to_tensor(self.load(k)), self.samples[k][1]
            except Exception as e:
                log.warning("skipping unreadable image %s: %s", self.samples[k][0], e)
        raise InvalidInputError("no image in the dataset can be read any more; check the data folder")
