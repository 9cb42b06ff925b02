"""TFDS builder `cityscapes_semantic`: Cityscapes fine annotations with the 19 training classes.

DeepLab-v2 §4.4: 2048x1024 street scenes from 50 cities; 19 classes evaluated (void ignored);
train 2,975 / val 500 / test 1,525. TFDS's own Cityscapes builder needs TensorFlow and keeps raw
labelIds; this one maps *_gtFine_labelIds.png to trainIds (cityscapesScripts labels.py, see
label_maps.CITYSCAPES_LABELS): the 19 classes become 0-18, everything else 255. The test split's
public labels are placeholders, so its labels come out all (or almost all) 255.

Images are the original 8-bit RGB PNGs, stored untouched.
"""

import glob
import os

import numpy as np
import tensorflow_datasets as tfds

from deeplab_jax.data.builders import label_maps, validation
from deeplab_jax.data.builders.manual import ExampleFiles, ManualSegmentationBuilder

IMAGE_ROOT = "leftImg8bit"
IMAGE_ARCHIVES = ("leftImg8bit_trainvaltest.zip",)
LABEL_ROOT = "gtFine"
LABEL_ARCHIVES = ("gtFine_trainvaltest.zip",)
SPLITS = ("train", "val", "test")
NUM_LABEL_IDS = 34  # labelIds 0-33 occur in *_labelIds.png


class CityscapesSemantic(ManualSegmentationBuilder):
    """Cityscapes (gtFine), 19 trainId classes, 255 = void / not evaluated."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    IMAGE_FORMAT = "png"
    HOMEPAGE = "https://www.cityscapes-dataset.com/"

    def _list_examples(self):
        images = self.locate(IMAGE_ROOT, IMAGE_ARCHIVES, members=(f"{IMAGE_ROOT}/",))
        labels = self.locate(LABEL_ROOT, LABEL_ARCHIVES, members=(f"{LABEL_ROOT}/",))
        missing = [f"{root}/{split}" for root, found in ((IMAGE_ROOT, images), (LABEL_ROOT, labels))
                   for split in SPLITS
                   if found is None or not os.path.isdir(os.path.join(found, split))]
        # The test split is optional (its labels are placeholders); train and val are not.
        missing = [path for path in missing if not path.endswith("/test")]
        if missing:
            raise self.missing_error(missing)
        self._table = label_maps.cityscapes_label_to_train_id()
        listed = {}
        for split in SPLITS:
            if not os.path.isdir(os.path.join(images, split)):
                continue
            paths = sorted(glob.glob(os.path.join(images, split, "*", "*_leftImg8bit.png")))
            listed[split] = []
            for path in paths:
                city = os.path.basename(os.path.dirname(path))
                stem = os.path.basename(path)[: -len("_leftImg8bit.png")]
                listed[split].append(ExampleFiles(
                    stem, path, os.path.join(labels, split, city, f"{stem}_gtFine_labelIds.png")))
        return listed

    def _load_example(self, files):
        image_bytes, image = self.load_image(files.image_path)
        label_ids = self.load_mask(files.label_path)
        bad = np.unique(label_ids[label_ids >= NUM_LABEL_IDS])
        if bad.size:
            raise validation.BadExampleError(
                files.label_path, f"labelIds {bad.tolist()[:10]} outside 0..33 (cityscapesScripts "
                                  "labels.py); is this a *_labelIds.png file?")
        return self.finish(files.example_id, image_bytes, image, self._table[label_ids],
                           files.image_path, files.label_path)
