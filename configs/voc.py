"""PASCAL VOC 2012 with the DeepLab-v1/v2 papers' settings (paper 002, §4.1).

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

from deeplab_jax.config_base import base_config
from deeplab_jax.model_config import overrides_config

VARIANTS = ("v2_aspp_l", "v2_aspp_s", "v2_largefov", "v2_msc", "v1_largefov", "v3", "v3plus",
            "v3plus_xception65")
V3_MODELS = {"v3": "deeplab_v3_resnet101", "v3plus": "deeplab_v3plus_resnet101",
             "v3plus_xception65": "deeplab_v3plus_xception65"}


def get_config(variant: str = "v2_aspp_l"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of configs/voc.py; use one of {VARIANTS}")
    config = base_config()
    config.dataset.name = "voc2012_trainaug"  # 10,582 train images (VOC + SBD), 1,449 val
    if variant in V3_MODELS:
        return _v3_config(config, variant)
    config.model.name = {
        "v2_aspp_l": "deeplab_v2_resnet101_aspp_l",
        "v2_aspp_s": "deeplab_v2_resnet101_aspp_s",
        "v2_largefov": "deeplab_v2_resnet101_largefov",
        "v2_msc": "deeplab_v2_resnet101_aspp_l",
        "v1_largefov": "deeplab_v1_largefov",
    }[variant]
    # Every keyword of the model factory, so --config.model.overrides.<name>= works.
    config.model.overrides = overrides_config(config.model.name)
    if variant == "v2_msc":
        config.model.overrides.msc_scales = (1.0, 0.75, 0.5)
    # Paper §4.1.2: batch 10, 20k iterations, poly (power 0.9) from 1e-3, classifier 10x,
    # momentum 0.9, weight decay 5e-4, random scale 0.5-1.5, crop 321, BN frozen (ResNet).
    config.batch_size = 10
    config.num_steps = 20000
    config.input.crop_size = (321, 321)
    config.input.scale_range = (0.5, 1.5)
    config.input.pad_value = (123, 117, 104)  # the release's mean colour, RGB
    config.optim.name = "sgd"
    config.optim.base_lr = 1e-3
    config.optim.schedule = "poly"
    config.optim.poly_power = 0.9
    config.optim.momentum = 0.9
    config.optim.weight_decay = 5e-4
    if variant == "v1_largefov":
        # DeepLab-v1 (ICLR 2015): 'step' policy (x0.1 every 2000 iterations), batch 20, 6000 steps,
        # fc8 10x; the v2 paper shows poly is better (§4.1.1) — switch with --config.optim.schedule.
        config.batch_size = 20
        config.num_steps = 6000
        config.optim.schedule = "step"
        config.optim.step_size = 2000
        config.optim.lr_multipliers = (("^head/fc8/.*bias$", 20.0), ("^head/fc8/", 10.0))
    else:
        config.optim.lr_multipliers = (
            ("^head/.*bias$", 20.0), ("^head/", 10.0),
            ("/bn/", 0.0),  # BatchNorm frozen (bn_frozen=True in the model as well)
        )
    config.eval.every_steps = 2000
    config.eval.batch_size = 8
    config.checkpoint_every_steps = 1000
    return config


def _v3_config(config, variant):
    """DeepLab-v3 / v3+ (v3 paper §4, v3+ paper §4; TF models/research/deeplab's VOC recipe).

    Output stride 16 for training and 8 for evaluation with the same weights, BatchNorm trained
    (batch 16 on an accelerator), crop 513, random scale 0.5-2.0, poly from 0.007, momentum 0.9,
    weight decay 4e-5, 30k steps, no classifier LR multiplier. The paper numbers add multi-scale
    (0.5-1.75) + flip evaluation: --config.eval.scales="(0.5,0.75,1.0,1.25,1.5,1.75)"
    --config.eval.flip=True. Expected val mIoU (ImageNet-initialised, trainaug, OS 8 eval):
    v3 ResNet-101 77.21 single-scale / 79.77 MS+flip (v3 Table 4); v3+ Xception-65 82.20 (TF
    model zoo, COCO + JFT pre-training; from ImageNet lower).
    """
    config.model.name = V3_MODELS[variant]
    config.model.overrides = overrides_config(config.model.name)  # OS 16, multi-grid, BN trained
    config.batch_size = 16
    config.num_steps = 30000
    config.input.crop_size = (513, 513)
    config.input.scale_range = (0.5, 2.0)
    config.optim.name = "sgd"
    config.optim.base_lr = 0.007
    config.optim.schedule = "poly"
    config.optim.momentum = 0.9
    config.optim.weight_decay = 4e-5
    config.optim.lr_multipliers = ()
    config.eval.output_stride = 8
    config.eval.every_steps = 5000
    config.checkpoint_every_steps = 2000
    return config
