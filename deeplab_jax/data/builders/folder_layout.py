"""The layout of a custom folder data set, read without building it.

  images/<stem>.{jpg,jpeg,png,bmp}   RGB or grey images (RGBA / other PNGs are re-encoded as RGB)
  masks/<stem>.png                   palette or greyscale PNG of class ids, 255 = ignore
  classes.txt                        class names, one per line; line k (from 0) names class k
  train.txt, val.txt (optional)      stems, one per line; without them a seeded split puts
                                     VAL_FRACTION of the sorted stems (at least 1) in val

Both the descriptor (datasets.folder_descriptor: classes, split sizes, eval size) and the builder
(folder.py) read the folder through these functions, so they agree.
"""

import hashlib
import os
import re
from typing import Dict, Iterable, List, Tuple

import numpy as np
from absl import logging
from PIL import Image

from deeplab_jax.data.builders import validation
from deeplab_jax.data.builders.files import read_id_list

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
CLASSES_FILE = "classes.txt"
VAL_FRACTION = 0.1  # of the images, in val when there are no list files
SEED = 0  # of that split
MAX_CLASSES = 255  # class ids are uint8 and 255 is the ignore label

LAYOUT = """\
  <manual_dir>/images/<stem>.jpg|.png      <manual_dir>/masks/<stem>.png
  <manual_dir>/classes.txt                 <manual_dir>/train.txt, val.txt (optional)"""

INSTRUCTIONS = "A custom data set is read from the folder given as --config.dataset.manual_dir."


def folder_config_name(manual_dir: str) -> str:
    """The TFDS config of a folder: its name and a hash of its absolute path (never shared)."""
    path = os.path.abspath(os.path.expanduser(manual_dir))
    slug = re.sub(r"[^A-Za-z0-9]+", "_", os.path.basename(path.rstrip("/")))[:40] or "root"
    return f"{slug}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def read_classes(manual_dir: str) -> Tuple[str, ...]:
    path = os.path.join(manual_dir, CLASSES_FILE)
    if not os.path.isfile(path):
        raise validation.missing_files_error("folder_segmentation", manual_dir, [CLASSES_FILE],
                                             LAYOUT)
    with open(path) as stream:
        names = tuple(line.strip() for line in stream if line.strip())
    if not 1 <= len(names) <= MAX_CLASSES:
        raise validation.BadExampleError(path, f"{len(names)} class names; 1 to {MAX_CLASSES} are "
                                               "needed (255 is the ignore label)")
    return names


def image_stems(manual_dir: str) -> Dict[str, str]:
    """stem -> image path for every image in images/."""
    folder = os.path.join(manual_dir, "images")
    if not os.path.isdir(folder):
        raise validation.missing_files_error("folder_segmentation", manual_dir,
                                             ["images/", "masks/"], LAYOUT)
    stems = {}
    for name in sorted(os.listdir(folder)):
        stem, extension = os.path.splitext(name)
        if extension.lower() in IMAGE_EXTENSIONS:
            if stem in stems:
                raise validation.BadExampleError(os.path.join(folder, name),
                                                 f"two images share the stem {stem!r}")
            stems[stem] = os.path.join(folder, name)
    return stems


def split_stems(manual_dir: str, stems, val_fraction: float = VAL_FRACTION,
                seed: int = SEED) -> Dict[str, List[str]]:
    """train/val stems from train.txt/val.txt, or a split seeded by `seed`."""
    lists = {split: os.path.join(manual_dir, f"{split}.txt") for split in ("train", "val")}
    if all(os.path.isfile(path) for path in lists.values()):
        return {split: read_id_list(path) for split, path in lists.items()}
    stems = sorted(stems)
    if len(stems) < 2:
        raise validation.BadExampleError(os.path.join(manual_dir, "images"),
                                         f"{len(stems)} images; at least 2 are needed to split")
    order = np.random.default_rng(seed).permutation(len(stems))
    num_val = min(len(stems) - 1, max(1, int(round(len(stems) * val_fraction))))
    val = sorted(stems[i] for i in order[:num_val])
    return {"train": sorted(set(stems) - set(val)), "val": val}


def largest_image(paths: Iterable[str]) -> Tuple[int, int]:
    """(height, width) covering every readable image, from the file headers.

    An image PIL cannot identify is left out with a warning: the build decodes every image and
    names it there (BadExampleError), or skips and records it with skip_bad.
    """
    height = width = 1
    for path in paths:
        try:
            with Image.open(path) as image:  # reads the header only
                width, height = max(width, image.width), max(height, image.height)
        except (OSError, SyntaxError, ValueError) as error:  # UnidentifiedImageError is an OSError
            logging.warning("%s: not a readable image (%s); the build will name or skip it", path,
                            error)
    return height, width
