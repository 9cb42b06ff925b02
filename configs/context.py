"""PASCAL-Context, 59 classes + background, DeepLab-v2 (§4.2, Table 6).

Commands (data: PASCAL-Context trainval.tar.gz + VOC 2010, downloaded on first use; offline, give
them as --config.dataset.manual_dir, layout in deeplab_jax/data/datasets.py):
  python -m deeplab_jax.main --config=configs/context.py --workdir=runs/context_v2_msc
  python -m deeplab_jax.main --config=configs/context.py:v2_aspp_l --workdir=runs/context_aspp \
      --config.dataset.manual_dir=/data/pascal_context
Variants: v2_msc (default: ResNet-101 ASPP-L with multi-scale inputs, the paper's best),
v2_aspp_l, v2_largefov, v1_largefov.
Expected val mIoU (paper, Table 6 / §4.2): VGG-16 LargeFOV 37.6 (39.6 with CRF); ResNet-101 about
2 points more; + MSC 41.4; + MS-COCO pre-training 42.9; with ASPP and CRF 45.7. The COCO-initialised
numbers need `--config.model.init_checkpoint=` (a COCO-trained checkpoint, see configs/cocostuff.py).

The paper gives no Context-specific optimiser settings: the §4.1.2 recipe (batch 10, poly 0.9
from 1e-3, classifier 10x, momentum 0.9, weight decay 5e-4, random scale 0.5-1.5, crop 321 from
the descriptor) is kept from configs/voc.py.
"""

from deeplab_jax.config import recipes

VARIANTS = ("v2_msc", "v2_aspp_l", "v2_largefov", "v1_largefov")


def get_config(variant: str = "v2_msc"):
    recipes.check_variant(variant, VARIANTS, "configs/context.py")
    # 4,998 train / 5,105 val, 60 classes
    config = recipes.paper_config(variant, "pascal_context")
    config.input.crop_size = None  # the descriptor's (321, 321)
    return config
