"""TFDS builder `folder_segmentation`: a user's own data set from a plain folder.

Layout (the manual directory):
  images/<stem>.{jpg,jpeg,png,bmp}   RGB or grey images (RGBA / other PNGs are re-encoded as RGB)
  masks/<stem>.png                   palette or greyscale PNG of class ids, 255 = ignore
  classes.txt                        class names, one per line; line k (from 0) names class k
  train.txt, val.txt (optional)      stems, one per line; without them a seeded split puts
                                     `val_fraction` of the sorted stems (at least 1) in val

Each folder is its own TFDS config, named after the folder and a hash of its absolute path
(`folder_config_name`), so two folders never share built files. Descriptors come from
`deeplab_jax.data.datasets.folder_descriptor(manual_dir)`.
"""

import dataclasses
import hashlib
import os
import re
from typing import Dict, List, Tuple

import numpy as np
import tensorflow_datasets as tfds

from deeplab_jax.data.builders import validation
from deeplab_jax.data.builders.manual import (
    ExampleFiles,
    ManualSegmentationBuilder,
    read_id_list,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
CLASSES_FILE = "classes.txt"

_LAYOUT = """\
  <manual_dir>/images/<stem>.jpg|.png      <manual_dir>/masks/<stem>.png
  <manual_dir>/classes.txt                 <manual_dir>/train.txt, val.txt (optional)"""

INSTRUCTIONS = f"""\
A custom data set is read from the folder given as --config.dataset.manual_dir:
{_LAYOUT}"""


def folder_config_name(manual_dir: str) -> str:
    path = os.path.abspath(os.path.expanduser(manual_dir))
    slug = re.sub(r"[^A-Za-z0-9]+", "_", os.path.basename(path.rstrip("/")))[:40] or "root"
    return f"{slug}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def read_classes(manual_dir: str) -> Tuple[str, ...]:
    path = os.path.join(manual_dir, CLASSES_FILE)
    if not os.path.isfile(path):
        raise validation.missing_files_error("folder_segmentation", manual_dir, [CLASSES_FILE],
                                             _LAYOUT)
    with open(path) as stream:
        names = tuple(line.strip() for line in stream if line.strip())
    if not 1 <= len(names) <= 255:
        raise validation.BadExampleError(path, f"{len(names)} class names; 1 to 255 are needed "
                                               "(255 is the ignore label)")
    return names


def image_stems(manual_dir: str) -> Dict[str, str]:
    """stem -> image path for every image in images/."""
    folder = os.path.join(manual_dir, "images")
    if not os.path.isdir(folder):
        raise validation.missing_files_error("folder_segmentation", manual_dir,
                                             ["images/", "masks/"], _LAYOUT)
    stems = {}
    for name in sorted(os.listdir(folder)):
        stem, extension = os.path.splitext(name)
        if extension.lower() in IMAGE_EXTENSIONS:
            if stem in stems:
                raise validation.BadExampleError(os.path.join(folder, name),
                                                 f"two images share the stem {stem!r}")
            stems[stem] = os.path.join(folder, name)
    return stems


def split_stems(manual_dir: str, stems, val_fraction: float, seed: int) -> Dict[str, List[str]]:
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


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
    val_fraction: float = 0.1
    seed: int = 0


class FolderSegmentation(ManualSegmentationBuilder):
    """A custom segmentation data set read from images/, masks/ and classes.txt."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [FolderConfig(name="default", description="a folder of images and masks")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    IMAGE_FORMAT = None  # JPEG and PNG files are both stored as they are

    @classmethod
    def make_config(cls, name: str) -> FolderConfig:
        return FolderConfig(name=name, description="a folder of images and masks")

    def _list_examples(self, manual_dir, dl_manager):
        del dl_manager
        self._classes = read_classes(manual_dir)
        images = image_stems(manual_dir)
        if not os.path.isdir(os.path.join(manual_dir, "masks")):
            raise validation.missing_files_error(self.name, manual_dir, ["masks/"], _LAYOUT)
        splits = split_stems(manual_dir, images, self.builder_config.val_fraction,
                             self.builder_config.seed)
        self.info.metadata["class_names"] = list(self._classes)
        return {split: [ExampleFiles(stem, images.get(stem, os.path.join(
                            manual_dir, "images", f"{stem}.<jpg|png>")),
                                     os.path.join(manual_dir, "masks", f"{stem}.png"))
                        for stem in stems]
                for split, stems in splits.items()}

    def _load_example(self, files):
        if "<" in files.image_path:
            raise validation.BadExampleError(files.image_path, "listed in a split file but no "
                                             "image with this stem is in images/")
        image_bytes, image = self.load_image(files.image_path)
        label = self.load_mask(files.label_path)
        return self.finish(files.example_id, image_bytes, image, label, files.image_path,
                           files.label_path)

    @property
    def num_classes(self):
        return len(self._classes)
