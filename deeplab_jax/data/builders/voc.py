"""TFDS builder `voc2012_segmentation`: PASCAL VOC 2012 segmentation, and the SBD 'trainaug' set.

DeepLab-v2 §4.1: 20 object classes + background; 1,464 train / 1,449 val pixel-labelled images,
augmented with the SBD annotations of Hariharan et al. to 10,582 'trainaug' training images.

Configs:
  default   VOCdevkit/VOC2012: JPEGImages, SegmentationClass (palette PNGs: the palette index is
            the class id, 255 = the 'difficult' boundary band), ImageSets/Segmentation/*.txt.
            Splits train 1,464 / val 1,449 / trainval 2,913.
  trainaug  + SBD benchmark_RELEASE/dataset: cls/<id>.mat (GTcls.Segmentation, class ids, no 255
            band), train.txt, val.txt. train = (VOC train ∪ SBD train ∪ SBD val) − VOC val =
            10,582; val = VOC val (1,449). An image with a VOC mask keeps it (finer, with the
            boundary band); the others take SBD's. All images come from VOC2012/JPEGImages.

Without a manual directory the archives are downloaded (datasets.ARCHIVES 'voc2012', 'sbd').
Masks are decoded with PIL (palette indices); OpenCV or TensorFlow would return the colours.
"""

import dataclasses
import os

import scipy.io
import tensorflow_datasets as tfds

from deeplab_jax.data import datasets
from deeplab_jax.data.builders import validation
from deeplab_jax.data.builders.files import read_id_list
from deeplab_jax.data.builders.manual import ExampleFiles, ManualSegmentationBuilder

VOC_ROOT = "VOCdevkit/VOC2012"
SBD_ROOT = "benchmark_RELEASE/dataset"
VOC, SBD = datasets.VOC_DOWNLOADS  # keys of datasets.ARCHIVES


def load_sbd_mat(path: str):
    """GTcls.Segmentation of an SBD cls/*.mat file: class ids uint8 (H, W)."""
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        segmentation = mat["GTcls"].Segmentation
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as error:
        raise validation.BadExampleError(
            path, f"not a readable SBD cls .mat with GTcls.Segmentation ({error})") from error
    if getattr(segmentation, "ndim", 0) != 2:
        raise validation.BadExampleError(path, "GTcls.Segmentation is not a 2-D array")
    if segmentation.min(initial=0) < 0 or segmentation.max(initial=0) > 255:
        raise validation.BadExampleError(path, "GTcls.Segmentation values outside 0..255")
    return segmentation.astype("uint8")


@dataclasses.dataclass
class VocConfig(tfds.core.BuilderConfig):
    with_sbd: bool = False


class Voc2012Segmentation(ManualSegmentationBuilder):
    """PASCAL VOC 2012 segmentation (+ SBD trainaug), 21 classes, 255 = boundary / ignore."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        VocConfig(name="default", description="VOC 2012 train / val / trainval"),
        VocConfig(name="trainaug", description="VOC 2012 + SBD: trainaug (10,582) / val",
                  with_sbd=True),
    ]
    IMAGE_FORMAT = "jpeg"
    HOMEPAGE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"

    def _list_examples(self):
        voc = self.locate(VOC_ROOT, (datasets.ARCHIVES[VOC].filename,), download=VOC,
                          members=(f"{VOC_ROOT}/JPEGImages", f"{VOC_ROOT}/SegmentationClass/",
                                   f"{VOC_ROOT}/ImageSets/Segmentation"))
        lists = {split: f"ImageSets/Segmentation/{split}.txt"
                 for split in ("train", "val", "trainval")}
        needed = ["JPEGImages", "SegmentationClass", *lists.values()]
        sbd = None
        if self.builder_config.with_sbd:
            sbd = self.locate(SBD_ROOT, (datasets.ARCHIVES[SBD].filename,), download=SBD,
                              members=(f"{SBD_ROOT}/cls/", f"{SBD_ROOT}/train.txt",
                                       f"{SBD_ROOT}/val.txt"))
        missing = [os.path.join(VOC_ROOT, rel) for rel in needed
                   if voc is None or not os.path.exists(os.path.join(voc, rel))]
        if self.builder_config.with_sbd:
            missing += [os.path.join(SBD_ROOT, rel) for rel in ("cls", "train.txt", "val.txt")
                        if sbd is None or not os.path.exists(os.path.join(sbd, rel))]
        if missing:
            raise self.missing_error(missing)
        ids = {split: read_id_list(os.path.join(voc, rel)) for split, rel in lists.items()}

        def voc_example(image_id):
            return ExampleFiles(image_id, os.path.join(voc, "JPEGImages", f"{image_id}.jpg"),
                                os.path.join(voc, "SegmentationClass", f"{image_id}.png"))

        if not self.builder_config.with_sbd:
            return {split: [voc_example(i) for i in split_ids] for split, split_ids in ids.items()}
        sbd_ids = (read_id_list(os.path.join(sbd, "train.txt"))
                   + read_id_list(os.path.join(sbd, "val.txt")))
        train_ids = trainaug_ids(ids["train"], sbd_ids, ids["val"])
        voc_labelled = set(ids["trainval"])
        train = [voc_example(i) if i in voc_labelled else
                 ExampleFiles(i, os.path.join(voc, "JPEGImages", f"{i}.jpg"),
                              os.path.join(sbd, "cls", f"{i}.mat")) for i in train_ids]
        return {"train": train, "val": [voc_example(i) for i in ids["val"]]}

    def _load_example(self, files):
        image_bytes, image = self.load_image(files.image_path)
        if files.label_path.endswith(".mat"):
            if not os.path.isfile(files.label_path):
                raise validation.BadExampleError(files.label_path, "file not found (listed in "
                                                 "SBD train.txt/val.txt but absent)")
            label = load_sbd_mat(files.label_path)
        else:
            label = self.load_mask(files.label_path)
        return self.finish(files.example_id, image_bytes, image, label, files.image_path,
                           files.label_path)


def trainaug_ids(voc_train, sbd_ids, voc_val):
    """(VOC train ∪ SBD train ∪ SBD val) − VOC val, sorted, without duplicates."""
    return sorted((set(voc_train) | set(sbd_ids)) - set(voc_val))
