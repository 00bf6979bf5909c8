"""Partial images: after which rows they come, and the grid and picture made of the rows finished so far."""
import numpy as np
import pytest
from PIL import Image

from dnd_sdk.partial_images import GREY, filled_grid, grey_unfinished, partial_row_counts


@pytest.mark.parametrize("rows, k, counts", [(4, 2, [2, 3]), (16, 3, [4, 8, 12]), (2, 3, [1]), (2, 1, [1]),
                                              (1, 3, []), (8, 0, [])])
def test_partial_images_come_after_evenly_spaced_rows_below_the_last(rows, k, counts):
    assert partial_row_counts(rows, k) == counts


def test_the_grid_repeats_the_last_finished_row_and_the_picture_greys_the_rest():
    h, w, depth = 4, 3, 2
    codes = np.arange(7 * depth).reshape(7, depth)  # 2 rows finished, 1 position of the third
    grid = filled_grid(codes, 2, (h, w, depth))
    assert grid.shape == (1, h, w, depth)
    assert (grid[0, :2].reshape(-1, depth) == codes[:6]).all()
    assert (grid[0, 2] == grid[0, 1]).all() and (grid[0, 3] == grid[0, 1]).all()
    image = grey_unfinished(Image.new("RGB", (8, 16), "white"), 2, h)
    pixels = np.asarray(image)
    assert (pixels[:8] == 255).all() and (pixels[8:] == GREY).all()
