"""Named DeepLab variants (v1, v2, v3, v3+): `MODELS` (name -> factory) and `get_model`.

Every factory is `factory(num_classes, **overrides) -> flax.linen.Module` (a `DeepLab`). Overrides
accepted by all of them: output_stride, msc_scales, bn_frozen, dtype, input_norm, dropout_rate,
aspp_rates, remat, pool_ceil_mode; the ResNet ones also take the architecture fields of
`build_resnet_deeplab` (stage_sizes, widths, block, stem_width, multi_grid, stride_on_3x3,
bn_momentum, bn_epsilon, zero_init_last_bn), the VGG ones those of `build_vgg_deeplab`.

Paper models (v2 paper §4.1.1 Table 1, §4.1.2 Tables 3-4) default to the released Caffe set-up:
'caffe_bgr' input, Caffe ceil-mode pooling, and for ResNet frozen BatchNorm (`use_global_stats`).
Demo models are small basic-block ResNets trained from scratch on the procedural demo data set:
'imagenet' input, trainable BN (momentum 0.9), torchvision (floor) pooling.
The v3/v3+ builders live in `registry_v3` (their overrides include aspp_rates at output stride 16,
decoder, aspp_separable, decoder_separable, extra_conv3x3 and pointrend; see there).

Output size: logit i sits on input pixel i * output_stride. With floor pooling (demo models) there
are len(range(0, H, os)) logits for every H, so labels[:, ::os, ::os] match. The Caffe ceil-mode
pools of the paper models give the same count when H = k * os + 1 (321 -> 41, 513 -> 65, the sizes
the paper uses) and for many other sizes, but one extra trailing logit for some even sizes (e.g.
320 -> 41); pass pool_ceil_mode=False to get len(range(0, H, os)) for every size.
"""

import inspect
from typing import Any, Sequence

import jax.numpy as jnp

from deeplab_jax.models.backbones.resnet import ResNet
from deeplab_jax.models.backbones.vgg import VGG16
from deeplab_jax.models.deeplab import DeepLab, check_msc_scales
from deeplab_jax.models.heads.aspp import ASPP_L_RATES, ASPP_S_RATES, LARGEFOV_RATES, ASPPV2
from deeplab_jax.models.heads.largefov import FCHead, VGGASPPHead
from deeplab_jax.models.layers import NormConfig
from deeplab_jax.models.registry_v3 import build_v3_resnet_deeplab, build_v3_xception_deeplab


def build_vgg_deeplab(
    num_classes: int,
    *,
    fc6_kernel: int = 3,
    fc6_rate: int = 12,
    fc_width: int = 1024,
    pool5a: bool = True,
    aspp_rates: Sequence[int] | None = None,
    output_stride: int = 8,
    msc_scales: Sequence[float] = (),
    bn_frozen: bool = False,
    dropout_rate: float = 0.5,
    input_norm: str = "caffe_bgr",
    pool_ceil_mode: bool = True,
    remat: bool = False,
    dtype: Any = jnp.float32,
):
    """DeepLab-v1 on VGG-16 (output stride 8); `aspp_rates` switches to the VGG ASPP head (Fig. 7).

    bn_frozen is accepted for a uniform configuration but has no effect: VGG-16 has no BatchNorm.
    """
    del bn_frozen
    if output_stride != 8:
        raise ValueError(
            f"output_stride={output_stride!r}: the VGG-16 DeepLab-v1 models exist only at output "
            "stride 8 (pool4/pool5 stride 1, conv5 rate 2); use a ResNet model for 16"
        )
    backbone = VGG16(pool_ceil_mode=pool_ceil_mode, remat=remat, dtype=dtype)
    if aspp_rates is None:
        head = FCHead(
            num_classes, fc6_kernel, fc6_rate, fc_width, dropout_rate, pool5a=pool5a,
            pool_ceil_mode=pool_ceil_mode, dtype=dtype,
        )
    else:
        head = VGGASPPHead(num_classes, tuple(aspp_rates), fc_width, dropout_rate, dtype=dtype)
    return DeepLab(
        backbone, head, msc_scales=check_msc_scales(msc_scales), input_norm=input_norm, dtype=dtype
    )


def build_resnet_deeplab(
    num_classes: int,
    *,
    stage_sizes: Sequence[int] = (3, 4, 23, 3),
    widths: Sequence[int] = (64, 128, 256, 512),
    block: str = "bottleneck",
    stem_width: int | None = None,
    output_stride: int = 8,
    multi_grid: Sequence[int] = (),
    stride_on_3x3: bool = False,
    pool_ceil_mode: bool = True,
    aspp_rates: Sequence[int] = ASPP_L_RATES,
    msc_scales: Sequence[float] = (),
    bn_frozen: bool = True,
    bn_momentum: float = 0.999,
    bn_epsilon: float = 1e-5,
    zero_init_last_bn: bool = False,
    dropout_rate: float = 0.0,
    input_norm: str = "caffe_bgr",
    remat: bool = False,
    dtype: Any = jnp.float32,
):
    """DeepLab-v2: atrous ResNet + v2 ASPP (summed 3x3 classifiers; one rate = LargeFOV).

    stem_width None means widths[0]; dropout_rate > 0 drops the features entering the classifiers
    (the release has no dropout on ResNet).
    """
    backbone = ResNet(
        stage_sizes=tuple(stage_sizes), widths=tuple(widths), block=block,
        stem_width=widths[0] if stem_width is None else stem_width, output_stride=output_stride,
        multi_grid=tuple(multi_grid), stride_on_3x3=stride_on_3x3, pool_ceil_mode=pool_ceil_mode,
        zero_init_last_bn=zero_init_last_bn, remat=remat,
        norm=NormConfig(frozen=bn_frozen, momentum=bn_momentum, epsilon=bn_epsilon), dtype=dtype,
    )
    head = ASPPV2(num_classes, tuple(aspp_rates), dropout_rate=dropout_rate, dtype=dtype)
    return DeepLab(
        backbone, head, msc_scales=check_msc_scales(msc_scales), input_norm=input_norm, dtype=dtype
    )


def _variant(builder, doc, **defaults):
    """A registered factory: the builder with this variant's defaults, overridable by keyword."""

    def factory(num_classes, **overrides):
        return builder(num_classes, **{**defaults, **overrides})

    factory.__doc__ = doc
    factory.builder = builder
    factory.defaults = defaults
    return factory


_RESNET101 = dict(stage_sizes=(3, 4, 23, 3))
_RESNET50 = dict(stage_sizes=(3, 4, 6, 3))
_DEMO = dict(
    stage_sizes=(1, 1, 1, 1), block="basic", stride_on_3x3=True, pool_ceil_mode=False,
    aspp_rates=(1, 2, 3, 4), bn_frozen=False, bn_momentum=0.9, input_norm="imagenet",
)
# Demo v3/v3+: the v2 demo trunk; one block in the last stage, so no multi-grid; small ASPP rates
# for 129 px crops (9x9 features at OS 16); 64-channel ASPP and decoder; the 16 stride-4 channels
# are kept at 16 (about 1:4 against the encoder, as 48:256). Dense 3x3 convs: on XLA CPU a train
# step with separable ones was 3-4x slower (depthwise convolutions), for fewer parameters.
_V3_DEMO = dict(
    stage_sizes=(1, 1, 1, 1), block="basic", stride_on_3x3=True, pool_ceil_mode=False,
    multi_grid=(), aspp_rates=(1, 2, 3), aspp_features=64, decoder_features=64,
    decoder_low_level_features=16, bn_frozen=False, bn_momentum=0.9, input_norm="imagenet",
)

MODELS = {
    "deeplab_v1_largefov": _variant(
        build_vgg_deeplab, "DeepLab-LargeFOV: VGG-16, pool5a, fc6 3x3 r=12 1024 ch (20.5M params).",
        fc6_kernel=3, fc6_rate=12, fc_width=1024, pool5a=True),
    "deeplab_v1_vgg16_7x7": _variant(
        build_vgg_deeplab, "Direct VGG-16 adaptation: fc6 7x7 r=4 4096 ch (134.3M params).",
        fc6_kernel=7, fc6_rate=4, fc_width=4096, pool5a=False),
    "deeplab_v1_vgg16_4x4_r4": _variant(
        build_vgg_deeplab, "DeepLab, Table 1: fc6 4x4 r=4 4096 ch.",
        fc6_kernel=4, fc6_rate=4, fc_width=4096, pool5a=False),
    "deeplab_v1_vgg16_4x4_r8": _variant(
        build_vgg_deeplab, "DeepLab, Table 1: fc6 4x4 r=8 4096 ch.",
        fc6_kernel=4, fc6_rate=8, fc_width=4096, pool5a=False),
    "deeplab_v2_vgg16_aspp_s": _variant(
        build_vgg_deeplab, "VGG-16 ASPP-S (Table 3): fc6-fc7-fc8 branches at r=2,4,8,12, summed.",
        aspp_rates=ASPP_S_RATES, pool5a=False),
    "deeplab_v2_vgg16_aspp_l": _variant(
        build_vgg_deeplab, "VGG-16 ASPP-L (Table 3): fc6-fc7-fc8 branches at r=6,12,18,24, summed.",
        aspp_rates=ASPP_L_RATES, pool5a=False),
    "deeplab_v2_resnet101_aspp_l": _variant(
        build_resnet_deeplab, "DeepLab-v2 ResNet-101 OS8 + ASPP-L (r=6,12,18,24).",
        aspp_rates=ASPP_L_RATES, **_RESNET101),
    "deeplab_v2_resnet101_aspp_s": _variant(
        build_resnet_deeplab, "DeepLab-v2 ResNet-101 OS8 + ASPP-S (r=2,4,8,12).",
        aspp_rates=ASPP_S_RATES, **_RESNET101),
    "deeplab_v2_resnet101_largefov": _variant(
        build_resnet_deeplab, "DeepLab-v2 ResNet-101 OS8 + LargeFOV (one 3x3 r=12 classifier).",
        aspp_rates=LARGEFOV_RATES, **_RESNET101),
    "deeplab_v2_resnet50_aspp_l": _variant(
        build_resnet_deeplab, "DeepLab-v2 ResNet-50 OS8 + ASPP-L.", aspp_rates=ASPP_L_RATES,
        **_RESNET50),
    "deeplab_v2_resnet50_aspp_s": _variant(
        build_resnet_deeplab, "DeepLab-v2 ResNet-50 OS8 + ASPP-S.", aspp_rates=ASPP_S_RATES,
        **_RESNET50),
    "deeplab_v2_resnet50_largefov": _variant(
        build_resnet_deeplab, "DeepLab-v2 ResNet-50 OS8 + LargeFOV.", aspp_rates=LARGEFOV_RATES,
        **_RESNET50),
    "deeplab_v2_demo": _variant(
        build_resnet_deeplab,
        "Demo: basic-block ResNet 16-32-64-128 (1 block per stage), OS 8, ASPP r=1..4 (~0.35M).",
        widths=(16, 32, 64, 128), **_DEMO),
    "deeplab_v2_demo_wide": _variant(
        build_resnet_deeplab,
        "Demo, wider: basic-block ResNet 24-48-96-192, OS 8, ASPP r=1..4 (~0.77M).",
        widths=(24, 48, 96, 192), **_DEMO),
    "deeplab_v3_resnet50": _variant(
        build_v3_resnet_deeplab,
        "DeepLab-v3: ResNet-50, multi-grid (1, 2, 4), OS 16, BN-ASPP r=6,12,18 + image pooling.",
        **_RESNET50),
    "deeplab_v3_resnet101": _variant(
        build_v3_resnet_deeplab,
        "DeepLab-v3: ResNet-101, multi-grid (1, 2, 4), OS 16, BN-ASPP r=6,12,18 + image pooling.",
        **_RESNET101),
    "deeplab_v3plus_resnet50": _variant(
        build_v3_resnet_deeplab, "DeepLab-v3+: ResNet-50 v3 encoder + decoder (stride-4 logits).",
        decoder=True, **_RESNET50),
    "deeplab_v3plus_resnet101": _variant(
        build_v3_resnet_deeplab, "DeepLab-v3+: ResNet-101 v3 encoder + decoder (stride-4 logits).",
        decoder=True, **_RESNET101),
    "deeplab_v3plus_xception65": _variant(
        build_v3_xception_deeplab,
        "DeepLab-v3+: aligned Xception-65, separable ASPP and decoder, OS 16 (the TF release).",
        decoder=True),
    "deeplab_v3_demo": _variant(
        build_v3_resnet_deeplab,
        "Demo v3: v2 demo trunk (basic 16-32-64-128), OS 16, 64-ch BN-ASPP r=1,2,3 (~0.57M).",
        widths=(16, 32, 64, 128), **_V3_DEMO),
    "deeplab_v3plus_demo": _variant(
        build_v3_resnet_deeplab,
        "Demo v3+: the v3 demo encoder + 64-ch decoder, stride-4 logits (~0.65M).",
        widths=(16, 32, 64, 128), decoder=True, **_V3_DEMO),
}


def accepted_overrides(name):
    """The keyword overrides `get_model(name, ...)` accepts."""
    factory = MODELS[name]
    params = inspect.signature(factory.builder).parameters
    return tuple(p for p in params if p != "num_classes")


def get_model(name, num_classes, **overrides):
    """Builds the named DeepLab variant with `num_classes` outputs; overrides replace defaults."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    allowed = accepted_overrides(name)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(
            f"model {name!r} does not accept override(s) {unknown}; accepted: {', '.join(allowed)}"
        )
    return MODELS[name](num_classes, **overrides)
