"""DeepLab-v1/v2/v3/v3+ Flax Linen models: `MODELS` (name -> factory), `get_model`, building blocks.

    from deeplab_jax import models
    model = models.get_model("deeplab_v2_resnet101_aspp_l", 21, msc_scales=(1.0, 0.75, 0.5))
    variables = model.init({"params": key, "dropout": key}, images_BxHxWx3, train=False)
    logits_BxhxwxK = model.apply(variables, images_BxHxWx3, train=False)

    # v3+ trained at output stride 16, evaluated at 8 with the same variables:
    model_os8 = models.get_model("deeplab_v3plus_resnet101", 21, output_stride=8)

See `registry` / `registry_v3` for the variants and their overrides, `deeplab` for MSC and the
PointRend outputs (`pointrend.py`; loss in `deeplab_jax.pointrend_loss`), `resize` for upsampling.
"""

from deeplab_jax.models.deeplab import DeepLab
from deeplab_jax.models.layers import (
    CAFFE_MEAN_BGR,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    INPUT_NORMS,
    Conv,
    ConvBN,
    NormConfig,
    normalize_images,
)
from deeplab_jax.models.pointrend import PointHead, point_sample
from deeplab_jax.models.registry import (
    MODELS,
    accepted_overrides,
    build_resnet_deeplab,
    build_vgg_deeplab,
    get_model,
)
from deeplab_jax.models.registry_v3 import build_v3_resnet_deeplab, build_v3_xception_deeplab
from deeplab_jax.models.separable import SeparableConvBN
from deeplab_jax.models.resize import (
    resize_bilinear,
    resize_labels_nearest,
    scaled_size,
    upsample_logits,
)

__all__ = [
    "CAFFE_MEAN_BGR",
    "IMAGENET_MEAN_RGB",
    "IMAGENET_STD_RGB",
    "INPUT_NORMS",
    "MODELS",
    "Conv",
    "ConvBN",
    "DeepLab",
    "NormConfig",
    "PointHead",
    "SeparableConvBN",
    "accepted_overrides",
    "build_resnet_deeplab",
    "build_v3_resnet_deeplab",
    "build_v3_xception_deeplab",
    "build_vgg_deeplab",
    "get_model",
    "normalize_images",
    "point_sample",
    "resize_bilinear",
    "resize_labels_nearest",
    "scaled_size",
    "upsample_logits",
]
