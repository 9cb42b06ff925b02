"""One descriptor per dataset: classes, ignore label, split sizes, palette, crop and eval sizes.

Configs and models take these numbers from here and never retype them (STYLE.md habit 8). Split sizes
are those of the official releases (paper 002, §4.1-4.4) and are asserted when a builder reads the real
data. `tfds_name` names the TFDS builder (and config) under deeplab_jax/data/builders/.
"""

import dataclasses
import os
from typing import Mapping, Optional, Tuple

import numpy as np

from deeplab_jax.data import demo_shapes, palettes
from deeplab_jax.data.builders import label_maps

IGNORE_LABEL = 255  # label of pixels that are not scored (VOC's boundary band, Cityscapes' void)
# Image padding value: the ImageNet mean in RGB, rounded; labels pad with IGNORE_LABEL.
PAD_RGB = (124, 116, 104)


@dataclasses.dataclass(frozen=True)
class DatasetDescriptor:
    name: str
    tfds_name: str
    num_classes: int
    class_names: Tuple[str, ...]
    splits: Mapping[str, int]
    train_split: str
    eval_split: str
    crop_size: Tuple[int, int]  # training crop (H, W)
    eval_size: Tuple[int, int]  # fixed padded (H, W) for evaluation batches; images never exceed it
    palette: np.ndarray = dataclasses.field(repr=False, compare=False, default=None)
    ignore_label: int = IGNORE_LABEL
    # What the user must put in the manual directory, shown when data are missing.
    manual_instructions: str = ""
    # True for data sets generated on the fly (no manual directory needed).
    generated: bool = False

    def __post_init__(self):
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"dataset {self.name!r}: {len(self.class_names)} class names for "
                f"{self.num_classes} classes")
        for split in (self.train_split, self.eval_split):
            if split not in self.splits:
                raise ValueError(f"dataset {self.name!r}: split {split!r} not in {dict(self.splits)}")


VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

_VOC_INSTRUCTIONS = """\
PASCAL VOC 2012 is not downloaded at run time. Put in the manual directory (--config.dataset.manual_dir):
  VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}
      (or VOCtrainval_11-May-2012.tar itself, from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/),
  and for trainaug also benchmark_RELEASE/dataset/{cls,train.txt,val.txt}
      (or SBD's benchmark.tgz itself, from http://home.bharathh.info/pubs/codes/SBD/download.html)."""

# The real data sets' other instructions live with their builders (MANUAL_DOWNLOAD_INSTRUCTIONS),
# which sources.prepare shows when manual_instructions is empty; imported lazily because the
# builders import TFDS.

DATASETS: dict = {
    "demo": DatasetDescriptor(
        name="demo",
        tfds_name="deeplab_demo",
        num_classes=demo_shapes.NUM_CLASSES,
        class_names=demo_shapes.CLASS_NAMES,
        splits={"train": 3000, "val": 300},
        train_split="train",
        eval_split="val",
        crop_size=(demo_shapes.IMAGE_SIZE, demo_shapes.IMAGE_SIZE),
        eval_size=(demo_shapes.IMAGE_SIZE, demo_shapes.IMAGE_SIZE),
        palette=palettes.voc_palette(),
        generated=True,
    ),
    "voc2012": DatasetDescriptor(
        name="voc2012",
        tfds_name="voc2012_segmentation/default",
        num_classes=21,
        class_names=VOC_CLASSES,
        splits={"train": 1464, "val": 1449, "trainval": 2913},
        train_split="train",
        eval_split="val",
        crop_size=(321, 321),
        eval_size=(513, 513),  # VOC images are at most 500x500
        palette=palettes.voc_palette(),
        manual_instructions=_VOC_INSTRUCTIONS,
    ),
    "voc2012_trainaug": DatasetDescriptor(
        name="voc2012_trainaug",
        tfds_name="voc2012_segmentation/trainaug",
        num_classes=21,
        class_names=VOC_CLASSES,
        splits={"train": 10582, "val": 1449},
        train_split="train",
        eval_split="val",
        crop_size=(321, 321),
        eval_size=(513, 513),
        palette=palettes.voc_palette(),
        manual_instructions=_VOC_INSTRUCTIONS,
    ),
}


DATASETS.update({
    # Paper 002 §4.2: 59 most frequent classes + background, VOC 2010 images (<= 500x500).
    "pascal_context": DatasetDescriptor(
        name="pascal_context",
        tfds_name="pascal_context",
        num_classes=60,
        class_names=label_maps.CONTEXT_60_CLASSES,
        splits={"train": 4998, "val": 5105},
        train_split="train",
        eval_split="val",
        crop_size=(321, 321),
        eval_size=(513, 513),
        palette=palettes.voc_palette(),
    ),
    # Paper 002 §4.3: 6 person parts + background; images with persons only.
    "person_part": DatasetDescriptor(
        name="person_part",
        tfds_name="pascal_person_part",
        num_classes=7,
        class_names=label_maps.PERSON_PART_CLASSES,
        splits={"train": 1716, "val": 1817},
        train_split="train",
        eval_split="val",
        crop_size=(321, 321),
        eval_size=(513, 513),
        palette=palettes.voc_palette(),
    ),
    # Paper 002 §4.4: 19 classes at full 2048x1024 resolution; the paper gives no crop size:
    # 769x769 random crops as in the later DeepLab releases, full images at evaluation.
    "cityscapes": DatasetDescriptor(
        name="cityscapes",
        tfds_name="cityscapes_semantic",
        num_classes=19,
        class_names=label_maps.CITYSCAPES_CLASSES,
        splits={"train": 2975, "val": 500, "test": 1525},
        train_split="train",
        eval_split="val",
        crop_size=(769, 769),
        eval_size=(1024, 2048),
        palette=palettes.full_palette(palettes.CITYSCAPES_COLORS),
    ),
    # MS-COCO pre-training (paper 002 §4.1.2) on COCO-Stuff labels; COCO images are <= 640 px.
    "coco_stuff164k": DatasetDescriptor(
        name="coco_stuff164k",
        tfds_name="coco_stuff164k",
        num_classes=171,
        class_names=label_maps.COCO_STUFF_CLASSES,
        splits={"train": 118287, "val": 5000},
        train_split="train",
        eval_split="val",
        crop_size=(513, 513),
        eval_size=(641, 641),
        palette=palettes.voc_palette(),
    ),
})

FOLDER = "folder"  # config.dataset.name of a custom folder data set (see folder_descriptor)


def folder_descriptor(manual_dir: str, crop_size=(321, 321)) -> DatasetDescriptor:
    """The descriptor of a custom folder data set (builders/folder.py), read from the folder.

    Class names come from classes.txt; split sizes from train.txt/val.txt or the seeded split;
    the eval size is the largest image, rounded up to 8k + 1 (DeepLab's output stride 8).
    """
    from deeplab_jax.data.builders import folder  # imports TFDS; only when a folder is used
    from PIL import Image

    if not manual_dir:
        raise ValueError("a folder data set needs --config.dataset.manual_dir=<folder with images/, "
                         "masks/ and classes.txt>")
    manual_dir = os.path.expanduser(manual_dir)
    classes = folder.read_classes(manual_dir)
    images = folder.image_stems(manual_dir)
    config = folder.FolderConfig(name="probe")
    splits = folder.split_stems(manual_dir, images, config.val_fraction, config.seed)
    height = width = 1
    for path in images.values():
        with Image.open(path) as image:  # reads the header only
            width, height = max(width, image.width), max(height, image.height)
    return DatasetDescriptor(
        name=FOLDER,
        tfds_name=f"folder_segmentation/{folder.folder_config_name(manual_dir)}",
        num_classes=len(classes),
        class_names=classes,
        splits={split: len(stems) for split, stems in splits.items()},
        train_split="train",
        eval_split="val",
        crop_size=tuple(crop_size),
        eval_size=(_round_up_8k1(height), _round_up_8k1(width)),
        palette=palettes.voc_palette(),
        manual_instructions=folder.INSTRUCTIONS,
    )


def _round_up_8k1(size: int) -> int:
    return 8 * -(-(size - 1) // 8) + 1


def get_dataset(name: str, manual_dir: Optional[str] = None) -> DatasetDescriptor:
    """The descriptor of `name`; the folder data set ('folder') also needs its manual_dir."""
    if name == FOLDER:
        return folder_descriptor(manual_dir)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS) + [FOLDER]}")
    return DATASETS[name]


def split_size(descriptor: DatasetDescriptor, split: str) -> Optional[int]:
    return descriptor.splits.get(split)
