"""Images as tensors and back: [3, H, W] float in [-1, 1] is the tokenizer's side, uint8 RGB the user's.
The uint8 rule here is the one every image of the project follows, the exported decoder's included."""
import numpy as np
import torch
from PIL import Image


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> [3, H, W] float32 in [-1, 1], the tokenizer's input range."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def unit_range(x: torch.Tensor) -> torch.Tensor:
    """Tokenizer output in about [-1, 1] -> float32 in [0, 1]."""
    return torch.clamp(x.float() * 0.5 + 0.5, 0.0, 1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """The pixel rule every image of the project follows, the exported decoder's included:
    floor(255 * clamp(x * 0.5 + 0.5, 0, 1))."""
    return torch.floor(unit_range(x) * 255.0).to(torch.uint8)


def to_image(tensor: torch.Tensor) -> Image.Image:
    """[3, H, W] in about [-1, 1] -> PIL RGB, the same rounding as the exported decoder."""
    return Image.fromarray(to_uint8(tensor).permute(1, 2, 0).cpu().numpy())
