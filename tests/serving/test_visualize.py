"""The comparison grid: every cell where the layout says, in the palette's colours."""

import numpy as np
import pytest

from deeplab_jax.data import palettes
from deeplab_jax.serving import visualize


W = 80  # the first image's width: wider than any column title, so titles stay in their column


def _inputs():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (5, W, 3), dtype=np.uint8),
              rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)]
    labels = [np.full((5, W), 255, np.uint8), np.array([[0, 1, 2, 3]] * 4, np.uint8)]
    predictions = {"a": [np.ones((5, W), np.uint8), np.eye(4, dtype=np.uint8)],
                   "b": [np.zeros((5, W), np.uint8), np.full((4, 4), 7, np.uint8)]}
    return images, labels, predictions


def test_cells_by_hand():
    images, labels, predictions = _inputs()
    palette = palettes.voc_palette()
    grid = visualize.comparison_grid(images, labels, predictions, palette, titles=False)
    gap = visualize.GAP
    # Cells are 5 x W (the largest image); 2 rows and 4 columns (image, a, b, ground truth).
    assert grid.shape == (2 * 5 + gap, 4 * W + 3 * gap, 3)
    cell = lambda row, column, h, w: grid[row * (5 + gap):row * (5 + gap) + h,
                                          column * (W + gap):column * (W + gap) + w]
    np.testing.assert_array_equal(cell(0, 0, 5, W), images[0])
    np.testing.assert_array_equal(cell(0, 1, 5, W), np.broadcast_to(palette[1], (5, W, 3)))
    np.testing.assert_array_equal(cell(0, 3, 5, W), np.broadcast_to([224, 224, 192], (5, W, 3)))
    np.testing.assert_array_equal(cell(1, 0, 4, 4), images[1])
    np.testing.assert_array_equal(cell(1, 1, 4, 4), palette[np.eye(4, dtype=int)])
    np.testing.assert_array_equal(cell(1, 2, 4, 4), np.broadcast_to(palette[7], (4, 4, 3)))
    np.testing.assert_array_equal(cell(1, 3, 4, 4), palette[[[0, 1, 2, 3]] * 4])
    # The smaller image's cell is padded white, as are the gaps between cells.
    assert (cell(1, 1, 5, W)[4:] == 255).all() and (cell(1, 1, 5, W)[:, 4:] == 255).all()
    assert (grid[5:5 + gap] == 255).all() and (grid[:, W:W + gap] == 255).all()


def test_titles_strip_names_every_column():
    images, labels, predictions = _inputs()
    plain = visualize.comparison_grid(images, labels, predictions, palettes.voc_palette(),
                                      titles=False)
    titled = visualize.comparison_grid(images, labels, predictions, palettes.voc_palette())
    strip = visualize.TITLE_HEIGHT
    np.testing.assert_array_equal(titled[strip:], plain)
    for column in range(4):  # some dark text pixels above each column
        left = column * (W + visualize.GAP)
        assert (titled[:strip, left:left + W] < 128).any(), column


def test_a_missing_map_is_refused():
    images, labels, predictions = _inputs()
    predictions["b"] = predictions["b"][:1]
    with pytest.raises(ValueError, match="one map per image"):
        visualize.comparison_grid(images, labels, predictions, palettes.voc_palette())
