"""Colour palettes for label maps: the PASCAL VOC palette and the Cityscapes colours.

VOC masks are stored as palette PNGs whose index is the class id (255 = boundary / ignore); the
palette is the bit-interleaving scheme of the VOC devkit (labelcolormap.m), used by PASCAL-Context and
Person-Part releases too.
"""

import numpy as np


def voc_palette(num_entries: int = 256) -> np.ndarray:
    """Returns the VOC devkit colour map as uint8 [num_entries, 3] (index 255 is (224, 224, 192))."""
    palette = np.zeros((num_entries, 3), np.uint8)
    for index in range(num_entries):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            # Bits 0, 1, 2 of each 3-bit group go to R, G, B, most significant first.
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (r, g, b)
    return palette


# Cityscapes trainId colours (cityscapesScripts labels.py), in trainId order 0..18.
CITYSCAPES_COLORS = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
        (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    np.uint8,
)


def full_palette(colors: np.ndarray, ignore_color=(255, 255, 255)) -> np.ndarray:
    """Extends K class colours to a 256-entry palette: unused ids black, 255 the ignore colour."""
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(colors)] = colors
    palette[255] = ignore_color
    return palette


def colorize(labels_HxW: np.ndarray, palette_256x3: np.ndarray) -> np.ndarray:
    """Maps class ids (0..255) to RGB colours, uint8 [H, W, 3]."""
    return palette_256x3[np.asarray(labels_HxW, np.uint8)]
