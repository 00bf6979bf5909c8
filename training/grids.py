"""Sample grids: rows of images in one PNG, so a user can watch training work."""
from pathlib import Path

import torch

from dnd_sdk.images import contact_sheet, save_png
from .pixels import to_image


def save_tensor_grid(path, columns: list, titles: list) -> None:
    """columns: list of [B, 3, H, W] tensors in about [-1, 1], each named by its title above it;
    row b shows image b of every column."""
    images = [to_image(col[b]) for b in range(columns[0].shape[0]) for col in columns]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_png(contact_sheet(images, cols=len(columns), background=(128, 128, 128), column_titles=titles), path)


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
