"""Small DeepLab-v2 (ResNet + ASPP) on the embedded procedural demo data set, CPU-friendly.

Command:
  python -m deeplab_jax.main --config=configs/demo.py --workdir=/tmp/deeplab_demo
Variants: `configs/demo.py:tiny` (a 1-2 minute smoke run on 'deeplab_demo/tiny'); `:v3plus` (the
v3+ demo model: BN-ASPP with image pooling and the decoder); `:v3plus_pointrend` (with PointRend).
Expected result: see README.md ("Demo") for the measured val mIoU and wall time on 2 CPU cores.
"""

from deeplab_jax.config import base_config, overrides_config
from deeplab_jax.data.datasets import PAD_RGB


VARIANTS = ("default", "tiny", "v3plus", "v3plus_pointrend")


def get_config(variant: str = "default"):
    config = base_config()
    config.dataset.name = "demo"
    config.model.name = "deeplab_v2_demo"
    config.model.overrides = overrides_config(config.model.name)
    # Small batches and a high LR: on 2 CPU cores the budget is optimiser steps, and b8 x 2 steps
    # beat b16 x 1 step on the same images (experiments/README.md).
    config.batch_size = 8
    config.num_steps = 2500
    config.input.crop_size = (129, 129)
    config.input.scale_range = (0.75, 1.25)
    config.input.pad_value = PAD_RGB
    config.optim.name = "adamw"
    config.optim.base_lr = 1e-2
    config.optim.weight_decay = 1e-4
    config.optim.warmup_steps = 100
    config.optim.lr_multipliers = ()
    # Background covers ~75% of pixels; down-weighting it lifts the object classes early on.
    config.loss.class_weights = (0.3,) + (1.0,) * 7
    config.eval.every_steps = 1000
    config.eval.batch_size = 32
    config.log_every_steps = 50
    config.checkpoint_every_steps = 1000
    if variant == "tiny":
        config.dataset.tfds_name = "deeplab_demo/tiny"
        config.batch_size = 8
        config.num_steps = 6
        config.eval.every_steps = 3
        config.eval.batch_size = 8
        config.log_every_steps = 2
        config.checkpoint_every_steps = 3
        config.predict.num_images = 2
        config.model.overrides.widths = (8, 8, 16, 16)
        config.model.overrides.stem_width = 8
    elif variant in ("v3plus", "v3plus_pointrend"):
        # DeepLab-v3+ (decoder on stride-4 features) with the same demo trunk and recipe.
        config.model.name = "deeplab_v3plus_demo"
        config.model.overrides = overrides_config(config.model.name)
        if variant == "v3plus_pointrend":
            config.model.overrides.pointrend = True
            config.model.overrides.pointrend_points = 512
            config.model.overrides.pointrend_subdivision_points = 4096
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r} of configs/demo.py; use one of {VARIANTS}")
    return config
