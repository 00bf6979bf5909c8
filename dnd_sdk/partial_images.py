"""Partial images: what an image looks like from the latent rows sampled so far.

The sampler fills the latent grid row by row, left to right. A partial image is the decoder's image
of the whole grid with every position not yet sampled filled by repeating the last finished row
downwards (a plain continuation, so that the decoder, whose receptive field crosses row boundaries,
sees no hard edge below the finished rows); the pixels of unfinished rows are then painted mid-grey,
so that only what the model has decided is shown. A row partly sampled counts as unfinished.

`partial_images` k asks for up to k of them per image, after evenly spaced numbers of finished
rows: partial image i after ceil((i + 1) * h / (k + 1)) rows, for those counts below h (a finished
image is the completed image, not a partial one). A grid of few rows can so give fewer than k:
a grid of 2 rows gives one partial image whatever k >= 1.
"""
import math

import numpy as np
from PIL import Image

# the colour of rows not yet sampled
GREY = (128, 128, 128)


def partial_row_counts(rows: int, partial_images: int) -> list:
    """The finished-row counts after which partial images are made, ascending, each below `rows`."""
    counts = {math.ceil((i + 1) * rows / (partial_images + 1)) for i in range(partial_images)}
    return sorted(c for c in counts if 0 < c < rows)


def filled_grid(codes: np.ndarray, rows_done: int, latent_shape: tuple) -> np.ndarray:
    """The codes of the first `rows_done` finished rows ([positions done, D], row-major), as a whole grid
    [1, h, w, D] whose other rows repeat the last finished one."""
    h, w, depth = latent_shape
    done = codes[:rows_done * w].reshape(rows_done, w, depth)
    return np.concatenate([done, np.repeat(done[-1:], h - rows_done, axis=0)])[None]


def grey_unfinished(image: Image.Image, rows_done: int, rows: int) -> Image.Image:
    """`image` with the pixels of latent rows rows_done.. painted grey."""
    top = image.height * rows_done // rows
    out = image.copy()
    out.paste(GREY, (0, top, image.width, image.height))
    return out
