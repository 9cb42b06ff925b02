"""PASCAL-Person-Part, 6 parts + background, DeepLab-v2 (§4.3, Table 7).

Commands (data: the Person-Part release + VOC 2010, not downloaded at run time, layout in
deeplab_jax/data/datasets.py):
  python -m deeplab_jax.main --config=configs/person_part.py --workdir=runs/person_part \
      --config.dataset.manual_dir=/data/person_part
  python -m deeplab_jax.main --config=configs/person_part.py:v2 --workdir=runs/person_part_ss
Variants: v2_msc (default: ResNet-101 with multi-scale inputs), v2 (single scale), v2_aspp_l.
Expected val mIoU (paper, Table 7 / §4.3): ResNet-101 58.9; + MSC 63.1; + MS-COCO pre-training
64.4 (needs `--config.model.init_checkpoint=`); CRF adds about half a point (64.94). LargeFOV and
ASPP brought no gain on this data set, so the default classifier is a single 3x3 rate-1 branch
(`aspp_rates=(1,)` on the ASPP model).

Optimiser and augmentation: the §4.1.2 recipe of configs/voc.py (the paper gives no other).
"""

from deeplab_jax.config import recipes

VARIANTS = ("v2_msc", "v2", "v2_aspp_l")


def get_config(variant: str = "v2_msc"):
    recipes.check_variant(variant, VARIANTS, "configs/person_part.py")
    # 1,716 train / 1,817 val, 7 classes
    config = recipes.paper_config("v2_msc" if variant == "v2_msc" else "v2_aspp_l",
                                  "person_part")
    config.input.crop_size = None  # the descriptor's (321, 321)
    if variant != "v2_aspp_l":
        config.model.overrides.aspp_rates = (1,)
    return config
