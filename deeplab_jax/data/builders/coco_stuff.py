"""TFDS builder `coco_stuff164k`: COCO-Stuff on the COCO 2017 images, 171 classes.

DeepLab pre-trains on MS-COCO before PASCAL (paper 002 §4.1.2); COCO-Stuff (Caesar et al. 2018)
labels all 164k COCO images with 80 thing + 91 stuff classes. The stuffthingmaps_trainval2017
PNGs hold labels.md id - 1 (0-181) and 255 for unlabeled; 11 of the 182 ids were removed from
COCO and never occur, so the 171 used ids are renumbered 0-170 in labels.md order
(label_maps.coco_stuff_to_171); 255 stays the ignore label. Splits: train 118,287 / val 5,000.
"""

import glob
import os

import numpy as np
import tensorflow_datasets as tfds

from deeplab_jax.data.builders import label_maps, validation
from deeplab_jax.data.builders.manual import ExampleFiles, ManualSegmentationBuilder

SPLITS = {"train": "train2017", "val": "val2017"}
IMAGE_CANDIDATES = ("images/{folder}", "{folder}")
LABEL_CANDIDATES = ("stuffthingmaps_trainval2017/{folder}", "stuffthingmaps/{folder}",
                    "annotations/{folder}")
LABEL_ARCHIVE = "stuffthingmaps_trainval2017.zip"

_LAYOUT = """\
  <manual_dir>/images/{train2017,val2017}/<id>.jpg        (or <manual_dir>/{train2017,val2017}/)
  <manual_dir>/stuffthingmaps_trainval2017/{train2017,val2017}/<id>.png
                                                           (or annotations/{train2017,val2017}/)
  (or the archives train2017.zip, val2017.zip, stuffthingmaps_trainval2017.zip)"""

INSTRUCTIONS = f"""\
COCO-Stuff is not downloaded at run time. Put in the manual directory
(--config.dataset.manual_dir):
  train2017.zip, val2017.zip            https://cocodataset.org/#download
  stuffthingmaps_trainval2017.zip       https://github.com/nightrome/cocostuff
Layout:
{_LAYOUT}"""


class CocoStuff164k(ManualSegmentationBuilder):
    """COCO-Stuff 164k (COCO 2017 images), 171 classes, 255 = unlabeled."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    NUM_CLASSES = 171
    IMAGE_FORMAT = "jpeg"
    OFFICIAL_SPLIT_SIZES = {"default": {"train": 118287, "val": 5000}}
    HOMEPAGE = "https://github.com/nightrome/cocostuff"

    def _find(self, manual_dir, candidates, folder, archive, dl_manager):
        for candidate in candidates:
            path = os.path.join(manual_dir, candidate.format(folder=folder))
            if os.path.isdir(path):
                return path
        return self.locate(manual_dir, folder, (archive,), dl_manager, members=(f"{folder}/",))

    def _list_examples(self, manual_dir, dl_manager):
        missing, listed = [], {}
        for split, folder in SPLITS.items():
            # stuffthingmaps_*.zip and train2017.zip both hold a top-level 'train2017/': extracted
            # into separate folders, labels are looked up in the stuffthingmaps one first.
            labels = None
            for candidate in LABEL_CANDIDATES:
                path = os.path.join(manual_dir, candidate.format(folder=folder))
                if os.path.isdir(path):
                    labels = path
                    break
            if labels is None:
                labels = self.locate(manual_dir, folder, (LABEL_ARCHIVE,), dl_manager,
                                     members=(f"{folder}/",), check_extracted=False)
            images = self._find(manual_dir, IMAGE_CANDIDATES, folder, f"{folder}.zip", dl_manager)
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
            raise validation.missing_files_error(self.name, manual_dir, missing, _LAYOUT,
                                                 INSTRUCTIONS)
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
