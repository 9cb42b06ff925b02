"""TFDS builder `pascal_person_part`: PASCAL-Person-Part, 6 person parts + background (7 classes).

DeepLab-v2 §4.3: the PASCAL-Part annotations of Chen et al. (2014) on VOC 2010 images, person parts
merged into head, torso, upper arms, lower arms, upper legs, lower legs; only images containing
persons: train 1,716 / val 1,817.

Configs:
  default     The Person-Part release used by DeepLab (Chen et al., 'Attention to scale', linked from
              the DeepLab project page as pascal_person_part.tar.gz):
                pascal_person_part/pascal_person_part_gt/<id>.png   (class ids 0-6, already merged)
                pascal_person_part/pascal_person_part_trainval_list/{train,val}.txt
                  (lines '/JPEGImages/<id>.jpg /SegmentationPart/<id>.png'; train_id.txt /
                  val_id.txt with bare ids are accepted too)
              + VOCdevkit/VOC2010/JPEGImages.
  from_parts  The raw PASCAL-Part release (trainval.tar.gz: Annotations_Part/<id>.mat, struct
              'anno' with objects(class, parts(part_name, mask))), merged here with
              label_maps.PERSON_PART_MERGE (later parts overwrite earlier ones, as in the release's
              own conversion). Images: the Person-Part lists above if present, else the VOC 2010
              ImageSets/Main/person_{train,val}.txt positives; images whose merge is empty are
              listed as bad ('no person part'). Sizes are not asserted for this config.
"""

import dataclasses
import os

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from deeplab_jax.data import datasets
from deeplab_jax.data.builders import label_maps, validation
from deeplab_jax.data.builders.files import first_existing
from deeplab_jax.data.builders.manual import ExampleFiles, ManualSegmentationBuilder

VOC2010_ROOT = "VOCdevkit/VOC2010"
RELEASE_ROOT = "pascal_person_part"
RELEASE_ARCHIVES = ("pascal_person_part.tar.gz", "pascal_person_part.zip")
PARTS_ROOT = "Annotations_Part"
PARTS_ARCHIVES = ("trainval.tar.gz",)


def read_person_part_list(path: str):
    """Ids of a Person-Part list: '/JPEGImages/<id>.jpg /SegmentationPart/<id>.png' or '<id>'."""
    ids = []
    with open(path) as stream:
        for line in stream:
            if line.strip():
                ids.append(os.path.splitext(os.path.basename(line.split()[0]))[0])
    return ids


def merge_person_parts(path: str, shape=None) -> np.ndarray:
    """Person-Part class ids (H, W) of a PASCAL-Part Annotations_Part/<id>.mat file."""
    try:
        anno = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["anno"]
        objects = np.atleast_1d(anno.objects)
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as error:
        raise validation.BadExampleError(
            path, f"not a readable PASCAL-Part .mat with anno.objects ({error})") from error
    label = None
    for obj in objects:
        if label is None and np.ndim(getattr(obj, "mask", None)) == 2:
            label = np.zeros(np.shape(obj.mask), np.uint8)
        if str(getattr(obj, "class", "")) != "person":
            continue
        for part in np.atleast_1d(obj.parts):
            if not hasattr(part, "part_name"):
                continue
            name = str(part.part_name)
            if name not in label_maps.PERSON_PART_MERGE:
                raise validation.BadExampleError(path, f"unknown person part name {name!r}")
            label[np.asarray(part.mask) > 0] = label_maps.PERSON_PART_MERGE[name]
    if label is None or not label.any():
        raise validation.BadExampleError(path, "no person part in this annotation")
    return label


@dataclasses.dataclass
class PersonPartConfig(tfds.core.BuilderConfig):
    from_parts: bool = False


class PascalPersonPart(ManualSegmentationBuilder):
    """PASCAL-Person-Part: background, head, torso, upper/lower arms, upper/lower legs."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        PersonPartConfig(name="default", description="Person-Part release (merged PNG labels)"),
        PersonPartConfig(name="from_parts", description="merged here from PASCAL-Part .mat files",
                         from_parts=True),
    ]
    IMAGE_FORMAT = "jpeg"

    def _list_examples(self):
        voc = self.locate(VOC2010_ROOT, (datasets.ARCHIVES["voc2010"].filename,),
                          members=(f"{VOC2010_ROOT}/JPEGImages", f"{VOC2010_ROOT}/ImageSets/Main/"))
        release = self.locate(RELEASE_ROOT, RELEASE_ARCHIVES)
        missing = [] if voc and os.path.isdir(os.path.join(voc, "JPEGImages")) else [
            f"{VOC2010_ROOT}/JPEGImages"]
        lists = {}
        for split in ("train", "val"):
            path = release and first_existing(
                os.path.join(release, "pascal_person_part_trainval_list"),
                (f"{split}.txt", f"{split}_id.txt"))
            if path:
                lists[split] = read_person_part_list(path)
            elif self.builder_config.from_parts and voc:
                voc_list = os.path.join(voc, f"ImageSets/Main/person_{split}.txt")
                if os.path.isfile(voc_list):
                    lists[split] = _positives(voc_list)
            if split not in lists:
                missing.append(f"{RELEASE_ROOT}/pascal_person_part_trainval_list/{split}.txt")
        if self.builder_config.from_parts:
            labels = self.locate(PARTS_ROOT, PARTS_ARCHIVES, members=(f"{PARTS_ROOT}/",))
            suffix = ".mat"
        else:
            labels = release and os.path.join(release, "pascal_person_part_gt")
            suffix = ".png"
        if not labels or not os.path.isdir(labels):
            missing.append(PARTS_ROOT if self.builder_config.from_parts
                           else f"{RELEASE_ROOT}/pascal_person_part_gt")
        if missing:
            raise self.missing_error(missing)
        return {split: [ExampleFiles(i, os.path.join(voc, "JPEGImages", f"{i}.jpg"),
                                     os.path.join(labels, f"{i}{suffix}")) for i in ids]
                for split, ids in lists.items()}

    def _load_example(self, files):
        image_bytes, image = self.load_image(files.image_path)
        if files.label_path.endswith(".mat"):
            if not os.path.isfile(files.label_path):
                raise validation.BadExampleError(files.label_path, "file not found")
            label = merge_person_parts(files.label_path)
        else:
            label = self.load_mask(files.label_path)
        return self.finish(files.example_id, image_bytes, image, label, files.image_path,
                           files.label_path)


def _positives(path: str):
    """Ids flagged 1 (present) in a VOC ImageSets/Main/<class>_<split>.txt file."""
    ids = []
    with open(path) as stream:
        for line in stream:
            fields = line.split()
            if len(fields) == 2 and fields[1] == "1":
                ids.append(fields[0])
    return ids
