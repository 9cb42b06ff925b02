"""Segmenting images of any size: `Predictor` (probabilities, labels) and `segment_files`.

For every image (one file or a folder, any size) `segment_files` writes <stem>.png, the label map as
a palette PNG (VOC colours; class ids exact), and <stem>_overlay.jpg, the classes blended over the
image. Images are padded bottom/right to a size bucket (multiples of 64 plus 1, so logit i sits on
pixel i*os) so that a folder of many sizes compiles a handful of programs, not one per image.
Unreadable files are reported and skipped; the caller gets the list.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from deeplab_jax.crf import dense_crf
from deeplab_jax.inference import TestTimeOptions, predict_logits
from deeplab_jax.serving import visualize

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
BUCKET = 64


def bucket_size(height, width, bucket=BUCKET):
    """Smallest (k * bucket + 1) >= each side: aligned for output strides dividing `bucket`."""
    def up(n):
        return max(1, -(-(n - 1) // bucket)) * bucket + 1
    return up(height), up(width)


class Predictor:
    """Full-resolution class probabilities and labels for single images of any size."""

    def __init__(self, model, variables, options: TestTimeOptions = TestTimeOptions(),
                 crf_params=None, crf_method="meanfield"):
        self.model = model
        self.variables = variables
        self.pad_value = np.asarray(options.pad_value, np.uint8)
        self.crf_params = crf_params
        self.crf_method = crf_method
        self.options = options
        self._logits = jax.jit(self._logits_fn)

    def _logits_fn(self, variables, images_BxHxWx3):
        return predict_logits(self.model, variables, images_BxHxWx3, self.options)

    def probabilities(self, image_HxWx3):
        height, width = image_HxWx3.shape[:2]
        padded_h, padded_w = bucket_size(height, width)
        padded = np.empty((padded_h, padded_w, 3), np.uint8)
        padded[:] = self.pad_value
        padded[:height, :width] = image_HxWx3
        logits = self._logits(self.variables, jnp.asarray(padded[None]))
        probs = np.asarray(jax.nn.softmax(logits[0, :height, :width], axis=-1))
        if self.crf_params is not None:
            probs = np.asarray(dense_crf(image_HxWx3, probs, self.crf_params,
                                         method=self.crf_method))
        return probs

    def labels(self, image_HxWx3):
        return self.probabilities(image_HxWx3).argmax(-1).astype(np.uint8)


def list_images(path):
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--input={path!r} is neither an image file nor a directory")
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {path!r}")
    return files


def read_rgb(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), np.uint8)


def segment_files(predictor, files, output_dir, palette, progress=True):
    """Writes PNG + overlay per file; returns [(path, error message)] of the files that failed."""
    os.makedirs(output_dir, exist_ok=True)
    failures = []
    for path in tqdm(files, desc="predict", unit="image", disable=not progress):
        try:
            image = read_rgb(path)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            failures.append((path, f"{type(error).__name__}: {error}"))
            continue
        labels = predictor.labels(image)
        stem = os.path.splitext(os.path.basename(path))[0]
        visualize.save_label_png(os.path.join(output_dir, f"{stem}.png"), labels, palette)
        Image.fromarray(visualize.overlay(image, labels, palette)).save(
            os.path.join(output_dir, f"{stem}_overlay.jpg"), quality=90)
    return failures
