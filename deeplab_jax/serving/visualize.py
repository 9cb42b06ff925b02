"""Pictures of results: palette label PNGs (VOC style) and colour overlays on the image."""

import os

import numpy as np
from PIL import Image

from deeplab_jax.data.palettes import colorize


def save_label_png(path: str, labels_HxW: np.ndarray, palette_256x3: np.ndarray) -> None:
    """Writes class ids as an indexed ('P' mode) PNG: ids stay exact, viewers show colours."""
    image = Image.fromarray(np.asarray(labels_HxW, np.uint8), mode="P")
    image.putpalette(np.asarray(palette_256x3, np.uint8).ravel().tolist())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)


def overlay(image_HxWx3: np.ndarray, labels_HxW: np.ndarray, palette_256x3: np.ndarray,
            alpha: float = 0.5, background: int | None = 0) -> np.ndarray:
    """Blends class colours over the image; `background` pixels keep the plain image."""
    colours = colorize(labels_HxW, palette_256x3).astype(np.float32)
    blended = (1 - alpha) * image_HxWx3.astype(np.float32) + alpha * colours
    if background is not None:
        keep = (np.asarray(labels_HxW) == background)[..., None]
        blended = np.where(keep, image_HxWx3.astype(np.float32), blended)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def panel(image_HxWx3, prediction_HxW, palette_256x3, label_HxW=None) -> np.ndarray:
    """image | prediction overlay | prediction colours | ground truth colours (if given)."""
    parts = [np.asarray(image_HxWx3, np.uint8), overlay(image_HxWx3, prediction_HxW, palette_256x3),
             colorize(prediction_HxW, palette_256x3)]
    if label_HxW is not None:
        parts.append(colorize(label_HxW, palette_256x3))
    return np.concatenate(parts, axis=1)
