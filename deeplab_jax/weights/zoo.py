"""The model zoo: published DeepLab weights, where they come from and what they measure.

`ZOO` maps a name to a `Release`: the URL, the size and checksum where the publisher gives them,
the importer and the registry model that reads the file, the data set whose classes it predicts,
and the published score. `python -m deeplab_jax.weights.fetch NAME --output=DIR` downloads,
verifies and converts one (`--list` prints this table).

Sizes and checksums: no publisher below gives a full checksum. torchvision's file names carry the
first 8 hex digits of the file's sha256 (torch.hub's `check_hash` convention) and its weights
metadata a `_file_size` in MB; the TF model zoo gives rounded sizes ("439MB"); the Caffe and
kazuto1011 releases give neither. Approximate sizes are checked with a tolerance (they catch an
HTML error page or a wrong file), and `fetch` records the sha256 it computed in deeplab_model.json
so later copies can be compared.

Where each fact comes from is written beside each entry. Scores are mIoU in percent as published,
with the evaluation setting in the key.
"""

import dataclasses
from typing import Mapping, Optional, Tuple

from deeplab_jax.data.builders import label_maps

TORCHVISION = "https://download.pytorch.org/models/"
TF_ZOO = "http://download.tensorflow.org/models/"
KAZUTO = "https://github.com/kazuto1011/deeplab-pytorch/releases/download/v1.0/"
DEEPLAB_V2_ZIP = ("http://liangchiehchen.com/projects/released/deeplab_aspp_resnet101/"
                  "prototxt_and_model.zip")
MSC = {"msc_scales": (1.0, 0.75, 0.5)}


@dataclasses.dataclass(frozen=True)
class Release:
    """One published weight file (or archive member) and how to read it."""

    name: str
    description: str
    url: str
    source: str  # importer: 'caffe', 'kazuto', 'torchvision', 'tf'
    model: str  # registry model the file is read into
    num_classes: int  # classes of that model (the file's classifier; any for an ImageNet init)
    dataset: Optional[str] = None  # key of deeplab_jax.data.datasets.DATASETS (class names)
    overrides: Mapping = dataclasses.field(default_factory=dict)
    kind: str = "trained"  # 'trained' (predicts `dataset`) or 'init' (backbone to train from)
    size_mb: Optional[float] = None  # published size, MB as the publisher rounds it
    size_tolerance: float = 0.0  # relative tolerance of size_mb (its rounding / MB vs MiB)
    sha256: Optional[str] = None  # full digest, when published
    sha256_prefix: Optional[str] = None  # leading hex digits, when published (torch.hub names)
    archive: Optional[str] = None  # 'zip' or 'tar.gz' when the URL is an archive
    member: Optional[str] = None  # file name (or TF checkpoint prefix) inside the archive
    allow_missing: Tuple[str, ...] = ()  # variables the file may lack (head of an ImageNet init)
    strict: bool = True  # False: file tensors the model does not use are ignored
    class_channels: Optional[Tuple[int, ...]] = None  # classifier outputs kept, in order
    published: Mapping = dataclasses.field(default_factory=dict)  # setting -> score (%)
    facts: str = ""  # where the URL, size, checksum and score come from

    @property
    def checksum_text(self):
        if self.sha256:
            return f"sha256 {self.sha256}"
        if self.sha256_prefix:
            return f"sha256 prefix {self.sha256_prefix}"
        return "not published"

    @property
    def size_text(self):
        return f"{self.size_mb:g} MB" if self.size_mb else "not published"


def _coco_stuff_channels():
    """The 171 COCO-Stuff label values (of 0-181) that occur, in order: kazuto1011's models
    output 182 channels, one per labels.md id; ours (data set coco_stuff164k) 171."""
    return tuple(v for v, name in enumerate(label_maps.COCO_STUFF_182) if name is not None)


def _torchvision(name, file, model, description, size_mb, published, facts, **fields):
    """A torchvision file: <name>-<first 8 hex digits of its sha256>.pth (torch.hub's
    check_hash convention), `_file_size` in MB in its weights' meta; VOC's classes."""
    prefix = file.rsplit("-", 1)[1].split(".")[0]
    return Release(name=name, description=description, url=TORCHVISION + file,
                   sha256_prefix=prefix, size_mb=size_mb, size_tolerance=0.05, source="torchvision",
                   model=model, num_classes=21, published=published, facts=facts, **fields)


def _tf_zoo(name, file, description, num_classes, dataset, published, facts):
    """A TF model zoo tarball of a v3+ Xception-65: model.ckpt.{index,data-*} inside, "439MB"."""
    return Release(name=name, description=description, url=TF_ZOO + file, archive="tar.gz",
                   member="model.ckpt", size_mb=439, size_tolerance=0.06, source="tf",
                   model="deeplab_v3plus_xception65", num_classes=num_classes, dataset=dataset,
                   published=published, facts=facts)


_KAZUTO_FACTS = "URL, scores: kazuto1011/deeplab-pytorch README"
_V2 = "deeplab_v2_resnet101_aspp_l"

_RELEASES = (
    # DeepLab-v1 (ICLR 2015). URL: the DeepLab-v1 release's download script (the DeepLab-LargeFOV
    # model page on the JHU CCVL site; an older copy sat under ccvl.stat.ucla.edu). The release's
    # run_pascal.sh names 'train2' the second stage, fine-tuned on trainval_aug, so this file has
    # seen VOC val: its val mIoU is optimistic. Scores: the v1 paper's LargeFOV rows on VOC 2012
    # val (train_aug model), 62.25 before and 67.64 after the CRF. Size, checksum: not published.
    Release(
        name="deeplab_v1_largefov_voc12", source="caffe", model="deeplab_v1_largefov",
        description="DeepLab-LargeFOV (VGG-16), VOC 2012 trainval_aug, Caffe", num_classes=21,
        url="http://www.cs.jhu.edu/~alanlab/ccvl/DeepLab-LargeFOV/train2_iter_8000.caffemodel",
        dataset="voc2012_trainaug",
        published={"VOC12 val, train_aug model": 62.25,
                   "VOC12 val, train_aug model, CRF": 67.64},
        facts="URL: DeepLab-v1 release download script; scores: DeepLab-v1 paper (VOC 2012 val)"),
    # VGG-16 with fc6/fc7 subsampled to 1024 channels (20M parameters), the initialisation of
    # DeepLab-LargeFOV (v1 paper §4.1). URL: the same download script ('init.caffemodel').
    Release(
        name="vgg16_20m_imagenet_init", kind="init", source="caffe", num_classes=21,
        description="VGG-16 ImageNet init of DeepLab-LargeFOV (fc6/fc7 1024 ch), Caffe",
        url="http://www.cs.jhu.edu/~alanlab/ccvl/init_models/vgg16_20M.caffemodel",
        model="deeplab_v1_largefov", dataset="voc2012_trainaug",
        allow_missing=("^params/head/fc8/",), strict=False,
        facts="URL: DeepLab-v1 release download script (init.caffemodel)"),
    # DeepLab-v2 ResNet-101 (TPAMI 2017). URL: the DeepLab-v2 model page's
    # 'prototxt_and_model.zip' (also kazuto1011's scripts/setup_caffemodels.sh). It holds
    # init.caffemodel (ResNet-101 pre-trained on MS-COCO, the VOC initialisation: kazuto1011's
    # README and setup script), train_iter_20000.caffemodel (trained on train_aug) and
    # train2_iter_20000.caffemodel (fine-tuned on trainval_aug: run_pascal.sh 'Training #2').
    # Scores: DeepLab-v2 ASPP-L + MSC + COCO on VOC 2012 val, 76.35 / 77.69 with CRF, as
    # kazuto1011's README tabulates the official numbers. Size: only "1GB+" for the caffemodels.
    Release(
        name="deeplab_v2_resnet101_msc_voc12", source="caffe", model=_V2, num_classes=21,
        description="DeepLab-v2 ResNet-101 ASPP-L MSC, COCO -> VOC 2012 train_aug, Caffe",
        url=DEEPLAB_V2_ZIP, archive="zip", member="train_iter_20000.caffemodel",
        dataset="voc2012_trainaug", overrides=MSC,
        published={"VOC12 val": 76.35, "VOC12 val, CRF": 77.69},
        facts="URL: DeepLab-v2 model page / kazuto1011 setup_caffemodels.sh; scores: DeepLab-v2 "
              "paper via kazuto1011 README ('Official')"),
    Release(
        name="deeplab_v2_resnet101_coco_init", kind="init", source="caffe", model=_V2,
        description="ResNet-101 (MSRA layout) pre-trained on ImageNet then MS-COCO: the v2 init",
        url=DEEPLAB_V2_ZIP, archive="zip", member="init.caffemodel", num_classes=21,
        dataset="voc2012_trainaug", allow_missing=("head",), strict=False,
        facts="URL and content: kazuto1011 README / setup_caffemodels.sh ('MSCOCO' init)"),
    # kazuto1011/deeplab-pytorch v1.0 release. URLs and scores: his README's performance tables
    # (VOC 2012 val: 76.65, 77.93 with CRF; COCO-Stuff 164k val: 39.1, 39.7 with CRF). Size and
    # checksum: not published. His COCO-Stuff models output 182 channels (README: "label indices
    # range from 0 to 181 ... only 171 classes are supervised"); the 171 are kept.
    Release(
        name="kazuto_deeplab_v2_voc12", source="kazuto", model=_V2, num_classes=21,
        description="DeepLab-v2 ResNet-101 MSC, COCO init -> VOC 2012 train_aug (PyTorch)",
        url=KAZUTO + "deeplabv2_resnet101_msc-vocaug-20000.pth", dataset="voc2012_trainaug",
        overrides=MSC, published={"VOC12 val": 76.65, "VOC12 val, CRF": 77.93},
        facts=_KAZUTO_FACTS),
    Release(
        name="kazuto_deeplab_v2_cocostuff164k", source="kazuto", model=_V2, num_classes=182,
        description="DeepLab-v2 ResNet-101 MSC, COCO-Stuff 164k train (PyTorch)",
        url=KAZUTO + "deeplabv2_resnet101_msc-cocostuff164k-100000.pth",
        dataset="coco_stuff164k", overrides=MSC, class_channels=_coco_stuff_channels(),
        published={"COCO-Stuff 164k val": 39.1, "COCO-Stuff 164k val, CRF": 39.7},
        facts=_KAZUTO_FACTS),
    # torchvision (torchvision/models/segmentation/deeplabv3.py, DeepLabV3_*_Weights
    # .COCO_WITH_VOC_LABELS_V1): URL with the sha256 prefix in the file name, `_file_size` and
    # metrics in the weights' meta. The mIoU is measured on a COCO val2017 subset with the 20 VOC
    # categories (torchvision docs), not on VOC val; the classes are VOC's.
    _torchvision("torchvision_deeplabv3_resnet50_coco", "deeplabv3_resnet50_coco-cd0a2569.pth",
                 "deeplab_v3_resnet50", "DeepLab-v3 ResNet-50 (torchvision), COCO subset with "
                 "VOC classes", 160.515, {"COCO val2017 (VOC classes)": 66.4},
                 "torchvision DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1 (url, meta)",
                 dataset="voc2012"),
    _torchvision("torchvision_deeplabv3_resnet101_coco", "deeplabv3_resnet101_coco-586e9e4e.pth",
                 "deeplab_v3_resnet101", "DeepLab-v3 ResNet-101 (torchvision), COCO subset with "
                 "VOC classes", 233.217, {"COCO val2017 (VOC classes)": 67.4},
                 "torchvision DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1 (url, meta)",
                 dataset="voc2012"),
    # torchvision ResNet-101 ImageNet (ResNet101_Weights.IMAGENET1K_V1, torchvision/models/
    # resnet.py: acc@1 77.374, `_file_size` 170.511): the ImageNet initialisation in the
    # torchvision layout (stride on the 3x3 conv, floor pooling, ImageNet mean/std input).
    _torchvision("torchvision_resnet101_imagenet_init", "resnet101-63fe2227.pth", _V2,
                 "ResNet-101 ImageNet (torchvision IMAGENET1K_V1), to train DeepLab from",
                 170.511, {"ImageNet top-1 (not mIoU)": 77.374},
                 "torchvision ResNet101_Weights.IMAGENET1K_V1 (url, meta)",
                 dataset="voc2012_trainaug", kind="init", allow_missing=("head",)),
    # TF models/research/deeplab g3doc/model_zoo.md: tarball URL, "439MB", PASCAL val mIoU 82.20
    # (eval OS 16, scale 1.0) and 83.58 (OS 8, scales 0.5:0.25:1.75, flip); Cityscapes val 78.79
    # (OS 16) and 80.42 (OS 8, scales 0.75:0.25:1.25, flip). Un-tar'ed: model.ckpt.{index,data}
    # (model_zoo.md) under the checkpoint's directory (local_test.sh: deeplabv3_pascal_train_aug/
    # model.ckpt). Checksum: not published.
    _tf_zoo("tf_deeplabv3plus_xception65_voc12", "deeplabv3_pascal_train_aug_2018_01_04.tar.gz",
            "DeepLab-v3+ Xception-65, ImageNet+COCO -> VOC 2012 train_aug (TF)", 21,
            "voc2012_trainaug", {"VOC12 val, OS16": 82.20, "VOC12 val, OS8, MS + flip": 83.58},
            "TF DeepLab g3doc/model_zoo.md (xception65_coco_voc_trainaug)"),
    _tf_zoo("tf_deeplabv3plus_xception65_cityscapes",
            "deeplabv3_cityscapes_train_2018_02_06.tar.gz",
            "DeepLab-v3+ Xception-65, ImageNet -> Cityscapes train_fine (TF)", 19, "cityscapes",
            {"Cityscapes val, OS16": 78.79, "Cityscapes val, OS8, MS + flip": 80.42},
            "TF DeepLab g3doc/model_zoo.md (xception65_cityscapes_trainfine)"),
)

ZOO = {release.name: release for release in _RELEASES}


def get(name, zoo=None):
    """The release called `name` (a clear error listing the names otherwise)."""
    zoo = ZOO if zoo is None else zoo
    if name not in zoo:
        raise KeyError(f"no release {name!r} in the model zoo; known: {', '.join(sorted(zoo))}")
    return zoo[name]


def table(zoo=None):
    """The zoo as text: one block per release (what `fetch --list` prints)."""
    zoo = ZOO if zoo is None else zoo
    lines = []
    for release in zoo.values():
        scores = ", ".join(f"{k} {v}" for k, v in release.published.items()) or "-"
        lines += [f"{release.name}  [{release.kind}, {release.source}]",
                  f"    {release.description}",
                  f"    model {release.model} ({release.num_classes} classes), data set "
                  f"{release.dataset or '-'}; published: {scores}",
                  f"    {release.url}" + (f" :: {release.member}" if release.member else ""),
                  f"    size {release.size_text}; checksum {release.checksum_text}"]
    return "\n".join(lines)
