"""Cityscapes (fine), 19 classes at full resolution, DeepLab-v2 (§4.4, Tables 8-9).

Commands (data: leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip, extracted or not; not
downloaded at run time (registration needed), layout in deeplab_jax/data/datasets.py):
  python -m deeplab_jax.main --config=configs/cityscapes.py --workdir=runs/cityscapes \
      --config.dataset.manual_dir=/data/cityscapes
Variants: v2_aspp_l (default), v2_largefov; v3, v3plus, v3plus_xception65 (v3/v3+ recipe, crop 769,
LR 0.01, 90k steps; expected val 79.1-79.6 for v3+ Xception-65 single-scale, v3+ paper Table 7).
Expected val mIoU (paper §4.4 / Table 9): full resolution +1.9 over half; ResNet-101 + LargeFOV
+2.6, ASPP +1.2, data augmentation +0.6, CRF +0.4, ending at 71.4 on val; 70.4 on the test server.

The paper uses no multi-scale inputs here (GPU memory) and gives no crop size or schedule: random
crops of the descriptor's 769x769 (scale 0.5-1.5), the §4.1.2 optimiser of configs/voc.py, and
full 1024x2048 images at evaluation (the descriptor's eval size; lower config.eval.batch_size or
use several devices if memory is short).
"""

from deeplab_jax.config import recipes

VARIANTS = ("v2_aspp_l", "v2_largefov", "v3", "v3plus", "v3plus_xception65")


def get_config(variant: str = "v2_aspp_l"):
    recipes.check_variant(variant, VARIANTS, "configs/cityscapes.py")
    # 2,975 train / 500 val, 19 trainIds, 255 ignored
    config = recipes.paper_config(variant, "cityscapes")
    config.input.crop_size = None  # the descriptor's (769, 769)
    config.eval.batch_size = 8
    if variant.startswith("v3"):
        # v3/v3+ on Cityscapes (v3 §4.4, v3+ §4.4, the TF release): crop 769, base LR 0.01,
        # batch 16 (accelerators), 90k steps, full-image evaluation at output stride 8.
        config.input.crop_size = (769, 769)
        config.optim.base_lr = 0.01
        config.num_steps = 90000
    return config
