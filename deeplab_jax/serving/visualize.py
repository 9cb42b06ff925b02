"""Pictures of results: palette label PNGs (VOC style), colour overlays on the image, and grids
comparing several models' predictions on the same images.

Files are written through epath (`deeplab_jax.storage`), so `path` may be local or gs://...
"""

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


TITLE_HEIGHT = 14  # pixels of the title strip above a comparison grid
GAP = 2  # white pixels between a grid's cells


def comparison_grid(images, labels, predictions, palette_256x3, titles=True) -> np.ndarray:
    """One row per image: image | each model's prediction | ground truth, as class colours.

    images: [H, W, 3] uint8 arrays (sizes may differ between rows: cells are padded white to the
    largest); labels: their ground truth [H, W]; predictions: {column title: [H, W] label maps, one
    per image}, columns in the dict's order. With `titles` a strip above names the columns.
    """
    names = list(predictions)
    if any(len(maps) != len(images) for maps in predictions.values()) or len(labels) != len(images):
        raise ValueError(f"comparison_grid: {len(images)} images, {len(labels)} labels and "
                         f"predictions of {[len(m) for m in predictions.values()]} images; give "
                         f"every column one map per image")
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    columns = 2 + len(names)
    grid = np.full(((height + GAP) * len(images) - GAP, (width + GAP) * columns - GAP, 3), 255,
                   np.uint8)
    for row, (image, label) in enumerate(zip(images, labels)):
        cells = [np.asarray(image, np.uint8)]
        cells += [colorize(predictions[name][row], palette_256x3) for name in names]
        cells.append(colorize(label, palette_256x3))
        top = row * (height + GAP)
        for column, cell in enumerate(cells):
            left = column * (width + GAP)
            grid[top:top + cell.shape[0], left:left + cell.shape[1]] = cell
    if not titles:
        return grid
    canvas = Image.new("RGB", (grid.shape[1], grid.shape[0] + TITLE_HEIGHT), "white")
    canvas.paste(Image.fromarray(grid), (0, TITLE_HEIGHT))
    draw = ImageDraw.Draw(canvas)
    for column, title in enumerate(["image", *names, "ground truth"]):
        draw.text((column * (width + GAP) + 2, 1), title, fill="black",
                  font=ImageFont.load_default())
    return np.asarray(canvas)
