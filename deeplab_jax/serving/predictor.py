"""Segmenting images of any size: `Predictor` (probabilities, labels) and `segment_files`.

For every image (one file or a folder, any size, subfolders kept) `segment_files` writes
<name>.png, the label map as a palette PNG (class ids exact, the data set's colours), and
<name>_overlay.jpg, the classes blended over the image; with `probabilities=True` also
<name>_probs.npy, the class probabilities as float16 H x W x K. Images are padded bottom/right to a
size bucket (multiples of 64 plus 1, so logit i sits on pixel i*os) so that a folder of many sizes
compiles a handful of programs, not one per image. Unreadable files are reported and skipped; the
caller gets the list. Files in a folder whose extension is not an image's are skipped with a
warning that names them.

Pixel formats: 8-bit images of any mode are converted to RGB; 16-bit grayscale (PNG/TIFF 'I;16',
or 'I' from a PNG) is scaled to 8 bits by dividing by 257 (65535 -> 255) instead of being clipped
at 255, which would saturate almost every pixel; 16-bit RGB PNGs are reduced to 8 bits by Pillow
itself. Other wide formats (32-bit integer, float) are refused with a message. Paths go through
`etils.epath`, so inputs and outputs may be URLs (gs://...).
"""

import collections
import io

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from deeplab_jax import storage
from deeplab_jax.crf import dense_crf
from deeplab_jax.inference import TestTimeOptions, predict_logits, prepare_if_unfolded
from deeplab_jax.serving import visualize

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
BUCKET = 64
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def bucket_size(height, width, bucket=BUCKET):
    """Smallest (k * bucket + 1) >= each side: aligned for output strides dividing `bucket`."""
    def up(n):
        return max(1, -(-(n - 1) // bucket)) * bucket + 1
    return up(height), up(width)


class Predictor:
    """Full-resolution class probabilities and labels for single images of any size."""

    def __init__(self, model, variables, options: TestTimeOptions = TestTimeOptions(),
                 crf_params=None, crf_method="meanfield"):
        # BatchNorm folded into the convolutions once (inference.prepare: faster, same scores).
        self.model, self.variables = prepare_if_unfolded(model, variables)
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
    """[(image path, its name relative to `path`)]: one file, or every image under a folder."""
    root = epath.Path(path)
    if root.is_file():
        return [(root, root.name)]
    if not root.is_dir():
        raise FileNotFoundError(f"--input={path!r} is neither an image file nor a directory")
    files, others = [], []
    for child in _files_under(root):
        (files if child.name.lower().endswith(IMAGE_EXTENSIONS) else others).append(child)
    if others:  # said, not silently dropped: a folder of .gif or .heic would otherwise vanish
        names = sorted(p.relative_to(root).as_posix() for p in others)
        logging.warning("skipped %d file(s) under %s whose extension is not one of %s: %s%s",
                        len(names), path, " ".join(IMAGE_EXTENSIONS), ", ".join(names[:5]),
                        ", ..." if len(names) > 5 else "")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {path!r}")
    return [(p, p.relative_to(root).as_posix()) for p in sorted(files, key=str)]


def _files_under(folder):
    """Every file under `folder`, recursively (one listing per folder, also on gs://)."""
    for child in folder.iterdir():
        if child.is_dir():
            yield from _files_under(child)
        else:
            yield child


def to_rgb8(image, name="image"):
    """uint8 H x W x 3 of a PIL image (see the module docstring for wide pixel formats)."""
    sixteen_bit = image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG")
    if sixteen_bit:
        values = np.asarray(image).astype(np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(f"{name}: pixel values outside 0..65535 in a 16-bit image")
        gray = ((values * 2 + 257) // 514).astype(np.uint8)  # round(v / 257): 65535 -> 255
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        raise ValueError(f"{name}: {image.mode!r} pixels (32-bit integer or float) have no "
                         "defined 8-bit scaling; save the image with 8 or 16 bits per channel")
    return np.asarray(image.convert("RGB"), np.uint8)


def _read_error(error):
    if isinstance(error, UnidentifiedImageError):  # Pillow's message names our in-memory buffer
        return ("UnidentifiedImageError: Pillow cannot read it as an image (damaged, or not the "
                "format its name says)")
    return f"{type(error).__name__}: {error}"


def read_rgb(path):
    path = epath.Path(path)
    with path.open("rb") as f, Image.open(io.BytesIO(f.read())) as image:
        return to_rgb8(image, str(path))


def output_names(names):
    """Output names without extensions (subfolders kept); an extension stays where two inputs
    would otherwise share a name (x.jpg and x.png in one folder)."""
    stems = [name.rsplit(".", 1)[0] for name in names]
    counts = collections.Counter(stems)
    return [name if counts[stem] > 1 else stem for name, stem in zip(names, stems)]


def write_outputs(output_dir, name, image, probs_HxWxK, palette, probabilities=False):
    """<name>.png (palette label map), <name>_overlay.jpg and, if asked, <name>_probs.npy."""
    output_dir = storage.as_path(output_dir)
    labels = probs_HxWxK.argmax(-1).astype(np.uint8)
    visualize.save_label_png(output_dir / f"{name}.png", labels, palette)
    visualize.save_jpeg(output_dir / f"{name}_overlay.jpg",
                        visualize.overlay(image, labels, palette), quality=90)
    if probabilities:
        buffer = io.BytesIO()
        np.save(buffer, probs_HxWxK.astype(np.float16))
        (output_dir / f"{name}_probs.npy").write_bytes(buffer.getvalue())
    return labels


def segment_files(predictor, files, output_dir, palette, progress=True, probabilities=False):
    """Writes the outputs of every (path, relative name) in `files` (from `list_images`).

    Returns [(path, error message)] of the files that could not be read.
    """
    epath.Path(output_dir).mkdir(parents=True, exist_ok=True)
    names = output_names([name for _, name in files])
    failures = []
    for (path, _), name in tqdm(list(zip(files, names)), desc="predict", unit="image",
                                disable=not progress):
        try:
            image = read_rgb(path)
        except (OSError, ValueError) as error:  # UnidentifiedImageError is an OSError
            failures.append((str(path), _read_error(error)))
            continue
        write_outputs(output_dir, name, image, predictor.probabilities(image), palette,
                      probabilities=probabilities)
    return failures
