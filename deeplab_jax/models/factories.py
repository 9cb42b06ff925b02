"""Builders of DeepLab v1, v2, v3 and v3+ from frozen spec dataclasses (registered in `registry`).

Every builder is `build_*(num_classes, *, <specs>) -> DeepLab` and takes, by keyword, a
`CommonSpec` (output stride, multi-scale inputs, input normalisation, pooling rule, remat, compute
dtype), a `NormConfig` (BatchNorm) and the specs of its backbone and head:
- `build_v1_deeplab`: VGG-16 (`VGGSpec`, `VGGHeadSpec`): fc6-fc7-fc8 (DeepLab-v1 and LargeFOV,
  v2 paper §4.1.1 Table 1) or the VGG ASPP (§4.1.2, Fig. 7); output stride 8 only;
- `build_v2_deeplab`: atrous ResNet (`ResNetSpec`) + v2 ASPP (`ASPPV2Spec`: summed 3x3
  classifiers, §3.2; one rate is LargeFOV);
- `build_v3_deeplab`: atrous ResNet or aligned Xception (`XceptionSpec`) + the v3 head (`ASPPSpec`:
  ASPP with BN and image pooling, v3 paper §3.3) or, with `decoder.enabled`, the v3+ head
  (`DecoderSpec`, v3+ paper §3.1; logits at stride 4), and optionally PointRend
  (`PointRendSpec`, a point head on the stride-4 features).
The ASPP rates of `build_v3_deeplab` are given at output stride 16 and scaled to
`common.output_stride` (6, 12, 18 -> 12, 24, 36 at OS 8): the parameter tree does not depend on the
output stride, so a model trained at OS 16 is evaluated at OS 8 with the same variables (v3 §4.1).
"""

from deeplab_jax.models.backbones.resnet import ResNet, ResNetSpec
from deeplab_jax.models.backbones.vgg import VGG16, VGGSpec
from deeplab_jax.models.backbones.xception import Xception, XceptionSpec
from deeplab_jax.models.deeplab import CommonSpec, DeepLab
from deeplab_jax.models.heads.aspp import ASPPV2, ASPPV2Spec
from deeplab_jax.models.heads.aspp_v3 import ASPPSpec, DeepLabV3Head
from deeplab_jax.models.heads.decoder import DecoderSpec, DeepLabV3PlusHead
from deeplab_jax.models.heads.largefov import FCHead, VGGASPPHead, VGGHeadSpec
from deeplab_jax.models.layers import NormConfig
from deeplab_jax.models.pointrend import PointHead, PointRendSpec


def backbone_module(spec, *, common: CommonSpec, norm: NormConfig):
    """The trunk described by `spec` (`ResNetSpec` or `XceptionSpec`) at common.output_stride."""
    shared = dict(output_stride=common.output_stride, remat=common.remat, norm=norm,
                  dtype=common.dtype)
    if isinstance(spec, ResNetSpec):
        return ResNet(spec=spec, pool_ceil_mode=common.pool_ceil_mode, **shared)
    if isinstance(spec, XceptionSpec):
        return Xception(spec=spec, **shared)  # no pooling layers: pool_ceil_mode does not apply
    raise TypeError(f"backbone spec must be a ResNetSpec or an XceptionSpec, got {spec!r}")


def _deeplab(common, *, backbone, head, point_head=None):
    return DeepLab(backbone=backbone, head=head, msc_scales=common.msc_scales,
                   input_norm=common.input_norm, dtype=common.dtype, point_head=point_head,
                   resize_convention=common.resize_convention)


def build_v1_deeplab(num_classes: int, *, backbone: VGGSpec, head: VGGHeadSpec,
                     common: CommonSpec, norm: NormConfig):
    """DeepLab-v1 on VGG-16 (output stride 8); `head.aspp_rates` selects the VGG ASPP head.

    `norm` is taken for a uniform interface but has no effect: VGG-16 has no BatchNorm.
    """
    del norm
    if common.output_stride != 8:
        raise ValueError(
            f"output_stride={common.output_stride!r}: the VGG-16 DeepLab-v1 models exist only at "
            "output stride 8 (pool4/pool5 stride 1, conv5 rate 2); use a ResNet model for 16"
        )
    trunk = VGG16(spec=backbone, pool_ceil_mode=common.pool_ceil_mode, remat=common.remat,
                  dtype=common.dtype)
    if head.aspp_rates is None:
        head_module = FCHead(
            num_classes=num_classes, fc6_kernel=head.fc6_kernel, fc6_rate=head.fc6_rate,
            width=head.width, dropout_rate=head.dropout_rate, pool5a=head.pool5a,
            pool_ceil_mode=common.pool_ceil_mode, dtype=common.dtype,
        )
    else:
        head_module = VGGASPPHead(num_classes=num_classes, rates=head.aspp_rates,
                                  width=head.width, dropout_rate=head.dropout_rate,
                                  dtype=common.dtype)
    return _deeplab(common, backbone=trunk, head=head_module)


def build_v2_deeplab(num_classes: int, *, backbone: ResNetSpec, head: ASPPV2Spec,
                     common: CommonSpec, norm: NormConfig):
    """DeepLab-v2: atrous ResNet + v2 ASPP (sum of 3x3 atrous classifiers)."""
    return _deeplab(
        common, backbone=backbone_module(backbone, common=common, norm=norm),
        head=ASPPV2(num_classes=num_classes, rates=head.rates, dropout_rate=head.dropout_rate,
                    dtype=common.dtype),
    )


def build_v3_deeplab(num_classes: int, *, backbone, aspp: ASPPSpec, decoder: DecoderSpec,
                     pointrend: PointRendSpec, common: CommonSpec, norm: NormConfig):
    """DeepLab-v3, or v3+ with `decoder.enabled`, on `backbone` (`ResNetSpec` / `XceptionSpec`).

    `aspp.rates` are at output stride 16. `aspp.extra_conv3x3` with output stride 8 and no
    multi-grid is torchvision's deeplabv3_resnet{50,101} (same parameter count); the v3+ head
    rejects it.
    """
    unit = dict(norm=norm, dtype=common.dtype)
    aspp = aspp.at_output_stride(common.output_stride)
    if decoder.enabled:
        head = DeepLabV3PlusHead(num_classes=num_classes, aspp=aspp, decoder=decoder, **unit)
    else:
        head = DeepLabV3Head(num_classes=num_classes, aspp=aspp, **unit)
    point_head = None
    if pointrend.enabled:
        point_head = PointHead(
            num_classes=num_classes, train_points=pointrend.points,
            oversample_ratio=pointrend.oversample_ratio,
            importance_ratio=pointrend.importance_ratio,
            subdivision_points=pointrend.subdivision_points, dtype=common.dtype,
        )
    return _deeplab(common, backbone=backbone_module(backbone, common=common, norm=norm),
                    head=head, point_head=point_head)
