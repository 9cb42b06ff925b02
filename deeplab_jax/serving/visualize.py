"""Pictures of results: palette label PNGs (VOC style) and colour overlays on the image.

Files are written through epath (`deeplab_jax.storage`), so `path` may be local or gs://...
"""

import io

import numpy as np
from PIL import Image

from deeplab_jax import storage
from deeplab_jax.data.palettes import colorize


def _write_image(path, image: Image.Image, **options) -> None:
    path = storage.as_path(path)
    buffer = io.BytesIO()
    image.save(buffer, format=options.pop("format"), **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.write_bytes(buffer.getvalue())
    except OSError as error:
        storage.raise_if_disk_full(error, "an image", path)
        raise


def save_label_png(path, labels_HxW: np.ndarray, palette_256x3: np.ndarray) -> None:
    """Writes class ids as an indexed ('P' mode) PNG: ids stay exact, viewers show colours."""
    image = Image.fromarray(np.asarray(labels_HxW, np.uint8), mode="P")
    image.putpalette(np.asarray(palette_256x3, np.uint8).ravel().tolist())
    _write_image(path, image, format="PNG")


def save_jpeg(path, image_HxWx3: np.ndarray, quality: int = 90) -> None:
    """Writes an RGB uint8 image as a JPEG."""
    _write_image(path, Image.fromarray(np.asarray(image_HxWx3, np.uint8)), format="JPEG",
                 quality=quality)


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
