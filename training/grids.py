"""Sample grids: rows of PIL images pasted into one PNG, so a user can watch training work."""
from pathlib import Path

import torch
from PIL import Image

from .data import to_image


def grid_image(rows: list, pad: int = 2, fill=(128, 128, 128)) -> Image.Image:
    """rows: list of lists of equally sized PIL images -> one image, `pad` pixels between cells."""
    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    out = Image.new("RGB", (cols * (w + pad) + pad, len(rows) * (h + pad) + pad), fill)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            out.paste(image, (pad + j * (w + pad), pad + i * (h + pad)))
    return out


def save_tensor_grid(path, columns: list) -> None:
    """columns: list of [B, 3, H, W] tensors in about [-1, 1]; row b shows image b of every column."""
    rows = [[to_image(col[b]) for col in columns] for b in range(columns[0].shape[0])]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid_image(rows).save(path)


def step_png(out_dir, step: int) -> Path:
    return Path(out_dir) / "samples" / f"step{step:07d}.png"


class eval_mode:
    """`with eval_mode(module):` eval mode and no autograd inside the block, the previous mode restored after."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.was, self.no_grad = module, module.training, torch.no_grad()

    def __enter__(self):
        self.no_grad.__enter__()
        return self.module.eval()

    def __exit__(self, *exc):
        self.module.train(self.was)
        self.no_grad.__exit__(*exc)
