"""TFDS builder `coco_stuff164k`: COCO-Stuff on the COCO 2017 images, 171 classes.

DeepLab pre-trains on MS-COCO before PASCAL (DeepLab-v2 §4.1.2); COCO-Stuff (Caesar et al. 2018)
labels all 164k COCO images with 80 thing + 91 stuff classes. The stuffthingmaps_trainval2017
PNGs hold labels.md id - 1 (0-181) and 255 for unlabeled; 11 of the 182 ids were removed from
COCO and never occur, so the 171 used ids are renumbered 0-170 in labels.md order
(label_maps.coco_stuff_to_171); 255 stays the ignore label. Splits: train 118,287 / val 5,000.
Without a manual directory the three archives are downloaded (datasets.ARCHIVES).
"""

import glob
import os

import numpy as np
import tensorflow_datasets as tfds

from deeplab_jax.data import datasets
from deeplab_jax.data.builders import label_maps, validation
from deeplab_jax.data.builders.manual import ExampleFiles, ManualSegmentationBuilder

SPLITS = {"train": "train2017", "val": "val2017"}
IMAGE_CANDIDATES = ("images/{folder}", "{folder}")
LABEL_CANDIDATES = ("stuffthingmaps_trainval2017/{folder}", "stuffthingmaps/{folder}",
                    "annotations/{folder}")
# Keys of datasets.ARCHIVES: the image archive of each split, and the label maps of both.
IMAGE_ARCHIVES = dict(zip(SPLITS.values(), datasets.COCO_STUFF_DOWNLOADS[:2]))
LABEL_ARCHIVE = datasets.COCO_STUFF_DOWNLOADS[2]


class CocoStuff164k(ManualSegmentationBuilder):
    """COCO-Stuff 164k (COCO 2017 images), 171 classes, 255 = unlabeled."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    IMAGE_FORMAT = "jpeg"
    HOMEPAGE = "https://github.com/nightrome/cocostuff"

    def _extracted_folder(self, candidates, folder):
        """The first manual_dir/<candidate> folder that exists (none when downloading)."""
        for candidate in candidates if self._manual_dir else ():
            path = os.path.join(self._manual_dir, candidate.format(folder=folder))
            if os.path.isdir(path):
                return path
        return None

    def _list_examples(self):
        missing, listed = [], {}
        for split, folder in SPLITS.items():
            # stuffthingmaps_*.zip and train2017.zip both hold a top-level 'train2017/': extracted
            # into separate folders, labels are looked up in the stuffthingmaps one first.
            labels = self._extracted_folder(LABEL_CANDIDATES, folder) or self.locate(
                folder, (datasets.ARCHIVES[LABEL_ARCHIVE].filename,), members=(f"{folder}/",),
                check_extracted=False, download=LABEL_ARCHIVE)
            key = IMAGE_ARCHIVES[folder]
            images = self._extracted_folder(IMAGE_CANDIDATES, folder) or self.locate(
                folder, (datasets.ARCHIVES[key].filename,), members=(f"{folder}/",), download=key)
            if images is None or os.path.abspath(images) == os.path.abspath(labels or ""):
                missing.append(IMAGE_CANDIDATES[0].format(folder=folder))
            if labels is None:
                missing.append(LABEL_CANDIDATES[0].format(folder=folder))
            if images and labels:
                listed[split] = [
                    ExampleFiles(os.path.splitext(os.path.basename(path))[0], path,
                                 os.path.join(labels, os.path.basename(path)[:-4] + ".png"))
                    for path in sorted(glob.glob(os.path.join(images, "*.jpg")))]
        if missing:
            raise self.missing_error(missing)
        self._table = label_maps.coco_stuff_to_171()
        return listed

    def _load_example(self, files):
        image_bytes, image = self.load_image(files.image_path)
        raw = self.load_mask(files.label_path)
        values = np.unique(raw)
        bad = values[(self._table[values] == 255) & (values != 255)]
        if bad.size:
            raise validation.BadExampleError(
                files.label_path, f"label values {bad.tolist()[:10]} are neither one of the 171 "
                                  "used COCO-Stuff ids (labels.md id - 1) nor 255")
        return self.finish(files.example_id, image_bytes, image, self._table[raw],
                           files.image_path, files.label_path)
