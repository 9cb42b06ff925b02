"""TFDS builder `pascal_context`: PASCAL-Context, 59 most frequent classes + background (60).

DeepLab-v2 §4.2 (following Mottaghi et al. 2014): whole-scene labels on the PASCAL VOC 2010 images;
evaluated on the 59 most frequent classes plus one background class; train 4,998 / val 5,105 (the
VOC 2010 ImageSets/Main train / val lists).

Reads the release's full-label files trainval/<id>.mat ('LabelMap', uint16: 0 unlabelled, 1-459 =
line numbers of labels.txt) and maps them to 0-59 by class name (label_maps.context_459_to_60):
each of the 59 classes of 59_labels.txt gets its index (1-59), every other class and unlabelled
pixels become 0 'background'. Without a manual directory the archives are downloaded
(datasets.ARCHIVES 'context_labels', 'voc2010'). If the release's labels.txt / 59_labels.txt are
in the manual directory they are checked against the transcribed lists and a mismatch stops the
build.
"""

import os

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from deeplab_jax.data import datasets
from deeplab_jax.data.builders import label_maps, validation
from deeplab_jax.data.builders.files import first_existing, read_id_list
from deeplab_jax.data.builders.manual import ExampleFiles, ManualSegmentationBuilder

VOC2010_ROOT = "VOCdevkit/VOC2010"
CONTEXT_ROOT = "trainval"
LABELS, VOC2010 = datasets.CONTEXT_DOWNLOADS  # keys of datasets.ARCHIVES


def parse_label_list(path: str):
    """Names of a 'id: name' (or one name per line) list file, in file order."""
    names = []
    with open(path) as stream:
        for line in stream:
            if line.strip():
                names.append(line.split(":", 1)[-1].strip())
    return tuple(names)


def load_label_map(path: str) -> np.ndarray:
    try:
        label_map = scipy.io.loadmat(path)["LabelMap"]
    except (ValueError, TypeError, KeyError, OSError) as error:
        raise validation.BadExampleError(
            path, f"not a readable PASCAL-Context .mat with 'LabelMap' ({error})") from error
    if label_map.ndim != 2:
        raise validation.BadExampleError(path, f"LabelMap has shape {label_map.shape}, not 2-D")
    bad = np.unique(label_map[(label_map < 0) | (label_map > 459)])
    if bad.size:
        raise validation.BadExampleError(
            path, f"LabelMap values {bad.tolist()[:10]} outside 0..459 (labels.txt has 459 classes)")
    return label_map


class PascalContext(ManualSegmentationBuilder):
    """PASCAL-Context (VOC 2010 images), 59 classes + background; labels 0-59, no ignore pixels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    IMAGE_FORMAT = "jpeg"
    HOMEPAGE = "https://cs.stanford.edu/~roozbeh/pascal-context/"

    def _list_examples(self):
        labels = self.locate(CONTEXT_ROOT, (datasets.ARCHIVES[LABELS].filename,), download=LABELS,
                             members=(f"{CONTEXT_ROOT}/",))
        voc = self.locate(VOC2010_ROOT, (datasets.ARCHIVES[VOC2010].filename,), download=VOC2010,
                          members=(f"{VOC2010_ROOT}/JPEGImages", f"{VOC2010_ROOT}/ImageSets/Main/"))
        missing = [] if labels else [CONTEXT_ROOT]
        missing += [os.path.join(VOC2010_ROOT, rel) for rel in
                    ("JPEGImages", "ImageSets/Main/train.txt", "ImageSets/Main/val.txt")
                    if voc is None or not os.path.exists(os.path.join(voc, rel))]
        if missing:
            raise self.missing_error(missing)
        self._table = self._mapping_table()
        return {split: [ExampleFiles(i, os.path.join(voc, "JPEGImages", f"{i}.jpg"),
                                     os.path.join(labels, f"{i}.mat"))
                        for i in read_id_list(os.path.join(voc, f"ImageSets/Main/{split}.txt"))]
                for split in ("train", "val")}

    def _mapping_table(self):
        classes_459, classes_59 = label_maps.CONTEXT_459_CLASSES, label_maps.CONTEXT_59_CLASSES
        for file_name, expected in (("labels.txt", classes_459), ("59_labels.txt", classes_59)):
            # The list files are separate downloads of the release: checked when given.
            path = self._manual_dir and first_existing(
                self._manual_dir, (file_name, os.path.join(CONTEXT_ROOT, file_name)))
            if path and parse_label_list(path) != expected:
                raise validation.BadExampleError(
                    path, f"class list differs from the PASCAL-Context release's {file_name} "
                          "built into deeplab_jax (label_maps.py); is this the official file?")
        return label_maps.context_459_to_60(classes_459, classes_59)

    def _load_example(self, files):
        image_bytes, image = self.load_image(files.image_path)
        if not os.path.isfile(files.label_path):
            raise validation.BadExampleError(files.label_path, "file not found (the image is "
                                             "listed in the VOC 2010 split but has no label file)")
        label = self._table[load_label_map(files.label_path)]
        return self.finish(files.example_id, image_bytes, image, label, files.image_path,
                           files.label_path)
