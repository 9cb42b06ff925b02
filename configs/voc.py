"""PASCAL VOC 2012 with the DeepLab-v1/v2 papers' settings (DeepLab-v2 §4.1).

Commands (data: VOC 2012 + SBD, downloaded on first use; offline, give the official archives or
their extracted folders as --config.dataset.manual_dir, layout in deeplab_jax/data/datasets.py):
  python -m deeplab_jax.main --config=configs/voc.py --workdir=runs/voc_v2_aspp_l
  python -m deeplab_jax.main --config=configs/voc.py:v1_largefov --workdir=runs/voc_v1 \
      --config.dataset.manual_dir=/data/voc
Variants: v2_aspp_l (default), v2_aspp_s, v2_largefov, v2_msc, v1_largefov.
Expected val mIoU (paper, before CRF, ImageNet-initialised; Tables 3-4): v1 LargeFOV 62.25 (VGG-16,
train aug), v2 ResNet-101 LargeFOV 69.7-ish with MSC+COCO, ASPP-L 71.57 with MSC + COCO init and
76.35 after CRF. Starting from ImageNet weights needs `--config.model.init_checkpoint=` (weights
import, see README); from scratch the numbers are far lower.
"""

from deeplab_jax.config import recipes

VARIANTS = recipes.VARIANTS


def get_config(variant: str = "v2_aspp_l"):
    recipes.check_variant(variant, VARIANTS, "configs/voc.py")
    # 10,582 train images (VOC + SBD "trainaug"), 1,449 val.
    return recipes.paper_config(variant, "voc2012_trainaug")
