"""Builders of the DeepLab-v3 / v3+ variants (registered in `registry.MODELS`).

`build_v3_resnet_deeplab` and `build_v3_xception_deeplab` return a `DeepLab` with
- the v3 head (ASPP with BN and image pooling -> classifier; logits at the output stride), or with
  `decoder=True` the v3+ head (ASPP -> decoder on the stride-4 features -> classifier; logits at
  stride 4);
- `aspp_rates` given at output stride 16 and scaled to `output_stride` (6, 12, 18 -> 12, 24, 36 at
  OS 8): the parameter tree does not depend on `output_stride`, so a model trained at OS 16 is
  evaluated at OS 8 by rebuilding it with `output_stride=8` and the same variables;
- `pointrend=True`: a PointRend point head on the stride-4 features (see `pointrend.py`).

Defaults follow the papers' training set-up (v3 §4.1, v3+ §4): BatchNorm trained (decay 0.9997 as
the TF release; epsilon 1e-5 for ResNet, 1e-3 for Xception), output stride 16, multi-grid (1, 2, 4)
in ResNet's block4 (v3 §4.1 "Multi-grid", Table 3 best), dropout 0.1 after the ASPP projection,
the torchvision ResNet layout (stride on the 3x3, floor pooling, ImageNet input normalisation), and
for Xception-65 the TF release (separable ASPP and decoder, [-1, 1] input).
"""

from typing import Any, Sequence

import jax.numpy as jnp

from deeplab_jax.models.backbones.resnet import ResNet
from deeplab_jax.models.backbones.xception import Xception
from deeplab_jax.models.deeplab import DeepLab, check_msc_scales
from deeplab_jax.models.heads.aspp_v3 import (
    DEEPLAB_V3_RATES,
    DeepLabV3Head,
    rates_for_output_stride,
)
from deeplab_jax.models.heads.decoder import DeepLabV3PlusHead
from deeplab_jax.models.layers import NormConfig
from deeplab_jax.models.pointrend import (
    IMPORTANCE_RATIO,
    OVERSAMPLE_RATIO,
    SUBDIVISION_POINTS,
    TRAIN_POINTS,
    PointHead,
)


def _v3_deeplab(
    backbone, num_classes, *, output_stride, norm, aspp_rates, aspp_features, image_pooling,
    aspp_separable, extra_conv3x3, decoder, decoder_low_level_features, decoder_features,
    decoder_separable, dropout_rate, msc_scales, input_norm, dtype, pointrend, pointrend_points,
    pointrend_subdivision_points, pointrend_oversample_ratio, pointrend_importance_ratio,
):
    rates = rates_for_output_stride(aspp_rates, output_stride)
    if decoder:
        if extra_conv3x3:
            raise ValueError(
                "extra_conv3x3 (torchvision's v3 head) does not apply with decoder=True")
        head = DeepLabV3PlusHead(
            num_classes, aspp_features, rates, image_pooling, aspp_separable, dropout_rate,
            decoder_low_level_features, decoder_features, decoder_separable, norm=norm,
            dtype=dtype,
        )
    else:
        head = DeepLabV3Head(
            num_classes, aspp_features, rates, image_pooling, aspp_separable, extra_conv3x3,
            dropout_rate, norm=norm, dtype=dtype,
        )
    point_head = None
    if pointrend:
        point_head = PointHead(
            num_classes, train_points=pointrend_points,
            oversample_ratio=pointrend_oversample_ratio,
            importance_ratio=pointrend_importance_ratio,
            subdivision_points=pointrend_subdivision_points, dtype=dtype,
        )
    return DeepLab(
        backbone, head, msc_scales=check_msc_scales(msc_scales), input_norm=input_norm,
        dtype=dtype, point_head=point_head,
    )


def build_v3_resnet_deeplab(
    num_classes: int,
    *,
    stage_sizes: Sequence[int] = (3, 4, 23, 3),
    widths: Sequence[int] = (64, 128, 256, 512),
    block: str = "bottleneck",
    stem_width: int | None = None,
    output_stride: int = 16,
    multi_grid: Sequence[int] = (1, 2, 4),
    stride_on_3x3: bool = True,
    pool_ceil_mode: bool = False,
    aspp_rates: Sequence[int] = DEEPLAB_V3_RATES,
    aspp_features: int = 256,
    image_pooling: bool = True,
    aspp_separable: bool = False,
    extra_conv3x3: bool = False,
    decoder: bool = False,
    decoder_low_level_features: int = 48,
    decoder_features: int = 256,
    decoder_separable: bool = False,
    dropout_rate: float = 0.1,
    msc_scales: Sequence[float] = (),
    bn_frozen: bool = False,
    bn_momentum: float = 0.9997,
    bn_epsilon: float = 1e-5,
    zero_init_last_bn: bool = False,
    input_norm: str = "imagenet",
    remat: bool = False,
    dtype: Any = jnp.float32,
    pointrend: bool = False,
    pointrend_points: int = TRAIN_POINTS,
    pointrend_subdivision_points: int = SUBDIVISION_POINTS,
    pointrend_oversample_ratio: float = OVERSAMPLE_RATIO,
    pointrend_importance_ratio: float = IMPORTANCE_RATIO,
):
    """DeepLab-v3 (or v3+ with `decoder=True`) on an atrous ResNet.

    `aspp_rates` are at output stride 16. `multi_grid` () means (1, ..., 1); it must have one factor
    per block of the last stage. `extra_conv3x3=True` with output_stride=8 and multi_grid=() is
    torchvision's deeplabv3_resnet{50,101} (same parameter count).
    """
    norm = NormConfig(frozen=bn_frozen, momentum=bn_momentum, epsilon=bn_epsilon)
    backbone = ResNet(
        stage_sizes=tuple(stage_sizes), widths=tuple(widths), block=block,
        stem_width=widths[0] if stem_width is None else stem_width, output_stride=output_stride,
        multi_grid=tuple(multi_grid), stride_on_3x3=stride_on_3x3, pool_ceil_mode=pool_ceil_mode,
        zero_init_last_bn=zero_init_last_bn, remat=remat, norm=norm, dtype=dtype,
    )
    return _v3_deeplab(
        backbone, num_classes, output_stride=output_stride, norm=norm, aspp_rates=aspp_rates,
        aspp_features=aspp_features, image_pooling=image_pooling, aspp_separable=aspp_separable,
        extra_conv3x3=extra_conv3x3, decoder=decoder,
        decoder_low_level_features=decoder_low_level_features, decoder_features=decoder_features,
        decoder_separable=decoder_separable, dropout_rate=dropout_rate, msc_scales=msc_scales,
        input_norm=input_norm, dtype=dtype, pointrend=pointrend, pointrend_points=pointrend_points,
        pointrend_subdivision_points=pointrend_subdivision_points,
        pointrend_oversample_ratio=pointrend_oversample_ratio,
        pointrend_importance_ratio=pointrend_importance_ratio,
    )


def build_v3_xception_deeplab(
    num_classes: int,
    *,
    output_stride: int = 16,
    multi_grid: Sequence[int] = (),
    middle_repeats: int = 16,
    width_multiplier: float = 1.0,
    relu_after_depthwise: bool = False,
    pool_ceil_mode: bool = False,
    aspp_rates: Sequence[int] = DEEPLAB_V3_RATES,
    aspp_features: int = 256,
    image_pooling: bool = True,
    aspp_separable: bool = True,
    extra_conv3x3: bool = False,
    decoder: bool = True,
    decoder_low_level_features: int = 48,
    decoder_features: int = 256,
    decoder_separable: bool = True,
    dropout_rate: float = 0.1,
    msc_scales: Sequence[float] = (),
    bn_frozen: bool = False,
    bn_momentum: float = 0.9997,
    bn_epsilon: float = 1e-3,
    input_norm: str = "inception",
    remat: bool = False,
    dtype: Any = jnp.float32,
    pointrend: bool = False,
    pointrend_points: int = TRAIN_POINTS,
    pointrend_subdivision_points: int = SUBDIVISION_POINTS,
    pointrend_oversample_ratio: float = OVERSAMPLE_RATIO,
    pointrend_importance_ratio: float = IMPORTANCE_RATIO,
):
    """DeepLab-v3+ (or v3 with `decoder=False`) on the modified aligned Xception-65.

    pool_ceil_mode is accepted for a uniform configuration but has no effect: Xception has no
    pooling layers.
    """
    del pool_ceil_mode
    norm = NormConfig(frozen=bn_frozen, momentum=bn_momentum, epsilon=bn_epsilon)
    backbone = Xception(
        output_stride=output_stride, multi_grid=tuple(multi_grid), middle_repeats=middle_repeats,
        width_multiplier=width_multiplier, relu_after_depthwise=relu_after_depthwise,
        remat=remat, norm=norm, dtype=dtype,
    )
    return _v3_deeplab(
        backbone, num_classes, output_stride=output_stride, norm=norm, aspp_rates=aspp_rates,
        aspp_features=aspp_features, image_pooling=image_pooling, aspp_separable=aspp_separable,
        extra_conv3x3=extra_conv3x3, decoder=decoder,
        decoder_low_level_features=decoder_low_level_features, decoder_features=decoder_features,
        decoder_separable=decoder_separable, dropout_rate=dropout_rate, msc_scales=msc_scales,
        input_norm=input_norm, dtype=dtype, pointrend=pointrend, pointrend_points=pointrend_points,
        pointrend_subdivision_points=pointrend_subdivision_points,
        pointrend_oversample_ratio=pointrend_oversample_ratio,
        pointrend_importance_ratio=pointrend_importance_ratio,
    )
