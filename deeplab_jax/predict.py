"""Segment images: python -m deeplab_jax.predict --config=... (--workdir=... | --weights=DIR)
                   --input=IMAGE_OR_DIR --output=DIR [--crf] [--scales=0.5,0.75,1] [--flip]

For every image (one file or a folder, any size) writes <stem>.png, the label map as a palette PNG
(VOC colours; class ids exact), and <stem>_overlay.jpg, the classes blended over the image. Images
are padded bottom/right to a size bucket (multiples of 64 plus 1, so logit i sits on pixel i*os) so
that a folder of many sizes compiles a handful of programs, not one per image. Unreadable files are
reported and skipped; the run continues and lists them at the end (exit status 1 if any).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from deeplab_jax import inference, visualize

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
BUCKET = 64


def bucket_size(height, width, bucket=BUCKET):
    """Smallest (k * bucket + 1) >= each side: aligned for output strides dividing `bucket`."""
    def up(n):
        return max(1, -(-(n - 1) // bucket)) * bucket + 1
    return up(height), up(width)


class Predictor:
    """Full-resolution class probabilities and labels for single images of any size."""

    def __init__(self, model, variables, pad_value=(124, 116, 104), crf_params=None,
                 crf_method="meanfield", scales=(1.0,), flip=False, fusion="mean"):
        self.model = model
        self.variables = variables
        self.pad_value = np.asarray(pad_value, np.uint8)
        self.crf_params = crf_params
        self.crf_method = crf_method
        self.options = dict(scales=tuple(scales), flip=flip, fusion=fusion)
        self._logits = jax.jit(self._logits_fn)

    def _logits_fn(self, variables, images_BxHxWx3):
        return inference.predict_logits(self.model, variables, images_BxHxWx3, **self.options)

    def probabilities(self, image_HxWx3):
        height, width = image_HxWx3.shape[:2]
        padded_h, padded_w = bucket_size(height, width)
        padded = np.empty((padded_h, padded_w, 3), np.uint8)
        padded[:] = self.pad_value
        padded[:height, :width] = image_HxWx3
        logits = self._logits(self.variables, jnp.asarray(padded[None]))
        probs = np.asarray(jax.nn.softmax(logits[0, :height, :width], axis=-1))
        if self.crf_params is not None:
            from deeplab_jax.crf import dense_crf

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


def main(argv):
    del argv
    from absl import app, flags

    from deeplab_jax.crf import CRFParams
    from deeplab_jax.restore import load_converted, load_trained

    config = flags.FLAGS.config
    if flags.FLAGS.weights:
        model, variables, descriptor = load_converted(config, flags.FLAGS.weights)
    elif flags.FLAGS.workdir:
        model, variables, descriptor, _, _ = load_trained(config, flags.FLAGS.workdir)
    else:
        raise app.UsageError("give --workdir (trained checkpoints) or --weights (converted weights)")
    crf = CRFParams.from_config(config.crf) if (flags.FLAGS.crf or config.crf.enabled) else None
    scales = tuple(float(s) for s in flags.FLAGS.scales) if flags.FLAGS.scales else tuple(
        config.eval.scales)
    predictor = Predictor(model, variables, tuple(config.input.pad_value), crf, config.crf.method,
                          scales=scales, flip=flags.FLAGS.flip or config.eval.flip,
                          fusion=config.eval.fusion)
    files = list_images(flags.FLAGS.input)
    failures = segment_files(predictor, files, flags.FLAGS.output, descriptor.palette,
                             progress=sys.stderr.isatty())
    print(f"segmented {len(files) - len(failures)} of {len(files)} images into {flags.FLAGS.output}")
    if failures:
        print(f"{len(failures)} file(s) could not be read:")
        for path, message in failures:
            print(f"  {path}: {message}")
        sys.exit(1)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "configuration file", lock_config=True)
    flags.DEFINE_string("workdir", None, "directory with the training checkpoints")
    flags.DEFINE_string("weights", None, "converted weights (python -m deeplab_jax.weights.convert)")
    flags.DEFINE_string("input", None, "an image file or a directory of images")
    flags.DEFINE_string("output", None, "directory for the label PNGs and overlays")
    flags.DEFINE_bool("crf", False, "refine with the dense CRF (config.crf parameters)")
    flags.DEFINE_list("scales", [], "input scales, e.g. 0.5,0.75,1.0 (default config.eval.scales)")
    flags.DEFINE_bool("flip", False, "also average left-right flipped predictions")
    flags.mark_flags_as_required(["config", "input", "output"])
    logging.set_verbosity(logging.WARNING)
    app.run(main)
