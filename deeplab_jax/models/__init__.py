"""DeepLab-v1/v2/v3/v3+ Flax Linen models: `MODELS` (name -> variant), `get_model`, building blocks.

    from deeplab_jax import models
    model = models.get_model("deeplab_v2_resnet101_aspp_l", 21, msc_scales=(1.0, 0.75, 0.5))
    variables = model.init({"params": key, "dropout": key}, images_BxHxWx3, train=False)
    logits_BxhxwxK = model.apply(variables, images_BxHxWx3, train=False)

    # v3+ trained at output stride 16, evaluated at 8 with the same variables:
    model_os8 = models.get_model("deeplab_v3plus_resnet101", 21, output_stride=8)

    # A model from its specs (frozen dataclasses) without the registry: deeplab_v3_resnet50.
    from deeplab_jax.models import factories
    model = factories.build_v3_deeplab(
        21, backbone=models.ResNetSpec((3, 4, 6, 3), multi_grid=(1, 2, 4), stride_on_3x3=True),
        aspp=models.ASPPSpec(), decoder=models.DecoderSpec(enabled=False),
        pointrend=models.PointRendSpec(enabled=False),
        common=models.CommonSpec(output_stride=16, input_norm="imagenet", pool_ceil_mode=False),
        norm=models.NormConfig(momentum=0.9997))

See `registry` for the variants and their flat overrides (`accepted_overrides`,
`override_defaults`), `factories` for the builders and which spec configures what, `deeplab` for
MSC and the PointRend outputs (`pointrend.py`; loss in `deeplab_jax.losses`), `resize` for
upsampling.
"""

from deeplab_jax.models.backbones.resnet import ResNetSpec
from deeplab_jax.models.backbones.vgg import VGGSpec
from deeplab_jax.models.backbones.xception import XceptionSpec
from deeplab_jax.models.deeplab import CommonSpec, DeepLab
from deeplab_jax.models.heads.aspp import ASPPV2Spec
from deeplab_jax.models.heads.aspp_v3 import ASPPSpec
from deeplab_jax.models.heads.decoder import DecoderSpec
from deeplab_jax.models.heads.largefov import VGGHeadSpec
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
from deeplab_jax.models.pointrend import PointHead, PointRendSpec, point_sample
from deeplab_jax.models.registry import (
    MODELS,
    accepted_overrides,
    build_resnet_deeplab,
    build_v3_resnet_deeplab,
    build_v3_xception_deeplab,
    build_vgg_deeplab,
    get_model,
    override_defaults,
)
from deeplab_jax.models.separable import SeparableConvBN
from deeplab_jax.models.resize import (
    resize_bilinear,
    resize_labels_nearest,
    scaled_size,
    upsample_logits,
)

__all__ = [
    "ASPPSpec",
    "ASPPV2Spec",
    "CAFFE_MEAN_BGR",
    "CommonSpec",
    "DecoderSpec",
    "IMAGENET_MEAN_RGB",
    "IMAGENET_STD_RGB",
    "INPUT_NORMS",
    "MODELS",
    "Conv",
    "ConvBN",
    "DeepLab",
    "NormConfig",
    "PointHead",
    "PointRendSpec",
    "ResNetSpec",
    "SeparableConvBN",
    "VGGHeadSpec",
    "VGGSpec",
    "XceptionSpec",
    "accepted_overrides",
    "build_resnet_deeplab",
    "build_v3_resnet_deeplab",
    "build_v3_xception_deeplab",
    "build_vgg_deeplab",
    "get_model",
    "normalize_images",
    "override_defaults",
    "point_sample",
    "resize_bilinear",
    "resize_labels_nearest",
    "scaled_size",
    "upsample_logits",
]
