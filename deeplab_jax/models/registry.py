"""Named DeepLab variants (v1, v2, v3, v3+): `MODELS`, `get_model` and their flat overrides.

Every entry of `MODELS` is a `Variant`: a builder of `factories` with one spec per builder argument
(`ResNetSpec`, `ASPPSpec`, `CommonSpec`, `NormConfig`, ...). Configurations address the specs'
fields by flat names, `get_model(name, num_classes, output_stride=8, bn_frozen=True, ...)`: each
`Family` maps its names onto 'argument.field' of its builder. `accepted_overrides(name)` lists a
model's names and `override_defaults(name)` their defaults; an unknown name is a ValueError.
Every model accepts output_stride, msc_scales, bn_frozen, dtype, input_norm, dropout_rate,
aspp_rates, remat, pool_ceil_mode and resize_convention (how MSC resizes: "caffe" or "pytorch");
aspp_rates and dropout_rate set each family's own head.

Paper models default to the authors' set-ups. v1/v2 (v2 paper §4.1.1 Table 1, §4.1.2 Tables 3-4):
the released Caffe models, 'caffe_bgr' input, Caffe ceil-mode pooling, and for ResNet frozen
BatchNorm (`use_global_stats`). v3/v3+ (v3 §4.1, v3+ §4): BatchNorm trained (decay 0.9997 as the TF
release; epsilon 1e-5 for ResNet, 1e-3 for Xception), output stride 16, multi-grid (1, 2, 4) in
ResNet's block4 (v3 §4.1 "Multi-grid", Table 3 best), dropout 0.1 after the ASPP projection, the
torchvision ResNet layout (stride on the 3x3, floor pooling, ImageNet input normalisation), and for
Xception-65 the TF release (separable ASPP and decoder, [-1, 1] input). Demo models are small
networks trained from scratch on the procedural demo data set, 'imagenet' input and torchvision
(floor) pooling: basic-block ResNets with trainable BN (momentum 0.9) for v2/v3/v3+, a narrow
VGG-16 (no BN, as the original) for v1.

Output size: logit i sits on input pixel i * output_stride. With floor pooling (demo and v3
models) there are len(range(0, H, os)) logits for every H, so labels[:, ::os, ::os] match. The
Caffe ceil-mode pools of the v1/v2 paper models give the same count when H = k * os + 1 (321 ->
41, 513 -> 65, the sizes the paper uses) and for many other sizes, but one extra trailing logit for
some even sizes (e.g. 320 -> 41); pass pool_ceil_mode=False to get len(range(0, H, os)) for every
size.
"""

import dataclasses
from typing import Any, Callable, Mapping

from deeplab_jax.models.backbones.resnet import RESNET50_STAGES, RESNET101_STAGES, ResNetSpec
from deeplab_jax.models.backbones.vgg import VGGSpec
from deeplab_jax.models.backbones.xception import XceptionSpec
from deeplab_jax.models.deeplab import CommonSpec
from deeplab_jax.models.factories import build_v1_deeplab, build_v2_deeplab, build_v3_deeplab
from deeplab_jax.models.heads.aspp import ASPP_L_RATES, ASPP_S_RATES, LARGEFOV_RATES, ASPPV2Spec
from deeplab_jax.models.heads.aspp_v3 import ASPPSpec
from deeplab_jax.models.heads.decoder import DecoderSpec
from deeplab_jax.models.heads.largefov import VGGHeadSpec
from deeplab_jax.models.layers import NormConfig
from deeplab_jax.models.pointrend import PointRendSpec


@dataclasses.dataclass(frozen=True)
class Family:
    """A builder and its flat override names, each mapped to 'argument.field' of the builder."""

    builder: Callable
    overrides: Mapping[str, str]

    def target(self, override):
        """(builder argument, spec field) of a flat override name."""
        argument, field = self.overrides[override].split(".")
        return argument, field


def _fields(argument, spec_cls):
    """Flat names equal to the field names of `spec_cls`, passed as `argument`."""
    return {f.name: f"{argument}.{f.name}" for f in dataclasses.fields(spec_cls)}


_COMMON = _fields("common", CommonSpec)
_NORM = {"bn_frozen": "norm.frozen", "bn_momentum": "norm.momentum", "bn_epsilon": "norm.epsilon"}
_V3_HEAD = {
    "aspp_rates": "aspp.rates", "aspp_features": "aspp.features",
    "image_pooling": "aspp.image_pooling", "aspp_separable": "aspp.separable",
    "extra_conv3x3": "aspp.extra_conv3x3", "dropout_rate": "aspp.dropout_rate",
    "decoder": "decoder.enabled", "decoder_low_level_features": "decoder.low_level_features",
    "decoder_features": "decoder.features", "decoder_separable": "decoder.separable",
    "pointrend": "pointrend.enabled", "pointrend_points": "pointrend.points",
    "pointrend_subdivision_points": "pointrend.subdivision_points",
    "pointrend_oversample_ratio": "pointrend.oversample_ratio",
    "pointrend_importance_ratio": "pointrend.importance_ratio",
}
V1 = Family(build_v1_deeplab, {
    "widths": "backbone.widths", "fc6_kernel": "head.fc6_kernel", "fc6_rate": "head.fc6_rate",
    "fc_width": "head.width",
    "pool5a": "head.pool5a", "aspp_rates": "head.aspp_rates", "dropout_rate": "head.dropout_rate",
    **_COMMON, "bn_frozen": "norm.frozen",  # VGG-16 has no BatchNorm: accepted, no effect
})
V2 = Family(build_v2_deeplab, {
    **_fields("backbone", ResNetSpec), "aspp_rates": "head.rates",
    "dropout_rate": "head.dropout_rate", **_COMMON, **_NORM,
})
V3_RESNET = Family(build_v3_deeplab, {**_fields("backbone", ResNetSpec), **_V3_HEAD, **_COMMON,
                                      **_NORM})
V3_XCEPTION = Family(build_v3_deeplab, {**_fields("backbone", XceptionSpec), **_V3_HEAD,
                                        **_COMMON, **_NORM})


def _reject_unknown(what, overrides, accepted):
    unknown = sorted(set(overrides) - set(accepted))
    if unknown:
        raise ValueError(
            f"{what} does not accept override(s) {unknown}; accepted: {', '.join(accepted)}")


@dataclasses.dataclass(frozen=True)
class Variant:
    """A registered model: `variant(num_classes, **overrides) -> DeepLab`.

    specs: the spec of each argument of `family.builder`; overrides replace their fields.
    """

    family: Family
    doc: str
    specs: Mapping[str, Any]

    def __post_init__(self):
        arguments = {self.family.target(name)[0] for name in self.family.overrides}
        if arguments != set(self.specs):
            raise TypeError(f"{self.doc!r}: specs {sorted(self.specs)} do not match the "
                            f"overrides' arguments {sorted(arguments)}")

    def defaults(self):
        """{flat override: its default in this variant}, in the family's order."""
        result = {}
        for name in self.family.overrides:
            argument, field = self.family.target(name)
            result[name] = getattr(self.specs[argument], field)
        return result

    def specs_with(self, overrides):
        """The builder's specs with the flat `overrides` applied."""
        _reject_unknown("this model", overrides, tuple(self.family.overrides))
        changes = {}
        for name, value in overrides.items():
            argument, field = self.family.target(name)
            changes.setdefault(argument, {})[field] = value
        return {argument: dataclasses.replace(spec, **changes.get(argument, {}))
                for argument, spec in self.specs.items()}

    def __call__(self, num_classes, **overrides):
        return self.family.builder(num_classes, **self.specs_with(overrides))


_V2_PAPER = dict(common=CommonSpec(), norm=NormConfig(frozen=True))
_V3_PAPER = dict(common=CommonSpec(output_stride=16, input_norm="imagenet", pool_ceil_mode=False),
                 norm=NormConfig(momentum=0.9997), pointrend=PointRendSpec(enabled=False))
_DEMO_TRUNK = dict(stage_sizes=(1, 1, 1, 1), block="basic", stride_on_3x3=True)
_DEMO = dict(common=CommonSpec(input_norm="imagenet", pool_ceil_mode=False),
             norm=NormConfig(momentum=0.9))


def _v1(doc, backbone=VGGSpec(), common=CommonSpec(), **head):
    return Variant(V1, doc, dict(backbone=backbone, head=VGGHeadSpec(**head), common=common,
                                 norm=NormConfig()))


def _v2(doc, rates, backbone=ResNetSpec(), **specs):
    return Variant(V2, doc, {"backbone": backbone, "head": ASPPV2Spec(rates), **_V2_PAPER,
                             **specs})


def _v3_resnet(doc, stage_sizes, decoder):
    return Variant(V3_RESNET, doc, dict(
        backbone=ResNetSpec(stage_sizes, multi_grid=(1, 2, 4), stride_on_3x3=True),
        aspp=ASPPSpec(), decoder=DecoderSpec(enabled=decoder), **_V3_PAPER))


# Demo v3/v3+: the v2 demo trunk; one block in the last stage, so no multi-grid; small ASPP rates
# for 129 px crops (9x9 features at OS 16); 64-channel ASPP and decoder; the 16 stride-4 channels
# are kept at 16 (about 1:4 against the encoder, as 48:256). Dense 3x3 convs by default;
# configs/demo.py:v3plus turns on separable ones in ASPP and decoder (measured better there).
def _v3_demo(doc, decoder):
    return Variant(V3_RESNET, doc, dict(
        backbone=ResNetSpec(widths=(16, 32, 64, 128), **_DEMO_TRUNK),
        aspp=ASPPSpec(rates=(1, 2, 3), features=64),
        decoder=DecoderSpec(enabled=decoder, low_level_features=16, features=64),
        **{**_V3_PAPER, **_DEMO, "common": dataclasses.replace(_DEMO["common"], output_stride=16)}))


MODELS = {
    "deeplab_v1_largefov": _v1(
        "DeepLab-LargeFOV: VGG-16, pool5a, fc6 3x3 r=12 1024 ch (20.5M params)."),
    "deeplab_v1_vgg16_7x7": _v1(
        "Direct VGG-16 adaptation: fc6 7x7 r=4 4096 ch (134.3M params).",
        fc6_kernel=7, fc6_rate=4, width=4096, pool5a=False),
    "deeplab_v1_vgg16_4x4_r4": _v1(
        "DeepLab, Table 1: fc6 4x4 r=4 4096 ch.", fc6_kernel=4, fc6_rate=4, width=4096,
        pool5a=False),
    "deeplab_v1_vgg16_4x4_r8": _v1(
        "DeepLab, Table 1: fc6 4x4 r=8 4096 ch.", fc6_kernel=4, fc6_rate=8, width=4096,
        pool5a=False),
    "deeplab_v2_vgg16_aspp_s": _v1(
        "VGG-16 ASPP-S (Table 3): fc6-fc7-fc8 branches at r=2,4,8,12, summed.",
        aspp_rates=ASPP_S_RATES, pool5a=False),
    "deeplab_v2_vgg16_aspp_l": _v1(
        "VGG-16 ASPP-L (Table 3): fc6-fc7-fc8 branches at r=6,12,18,24, summed.",
        aspp_rates=ASPP_L_RATES, pool5a=False),
    # Demo v1: VGG-16 (no BatchNorm) at an eighth of its widths, about the v2 demo's size, trained
    # from scratch like the other demo models (their input normalisation and floor pooling);
    # LargeFOV's fc6 rate 12 at 321 px scaled to the demo's 129 px crops as the demo ASPP scales
    # ASPP-L (6..24 -> 1..4).
    "deeplab_v1_demo": _v1(
        "Demo LargeFOV: VGG-16 at 1/8 width (8-16-32-64-64), pool5a, fc6 3x3 r=2, 128 ch "
        "(~0.32M).", VGGSpec(widths=(8, 16, 32, 64, 64)),
        CommonSpec(input_norm="imagenet", pool_ceil_mode=False), fc6_rate=2, width=128),
    "deeplab_v2_resnet101_aspp_l": _v2(
        "DeepLab-v2 ResNet-101 OS8 + ASPP-L (r=6,12,18,24).", ASPP_L_RATES),
    "deeplab_v2_resnet101_aspp_s": _v2(
        "DeepLab-v2 ResNet-101 OS8 + ASPP-S (r=2,4,8,12).", ASPP_S_RATES),
    "deeplab_v2_resnet101_largefov": _v2(
        "DeepLab-v2 ResNet-101 OS8 + LargeFOV (one 3x3 r=12 classifier).", LARGEFOV_RATES),
    "deeplab_v2_resnet50_aspp_l": _v2(
        "DeepLab-v2 ResNet-50 OS8 + ASPP-L.", ASPP_L_RATES, ResNetSpec(RESNET50_STAGES)),
    "deeplab_v2_resnet50_aspp_s": _v2(
        "DeepLab-v2 ResNet-50 OS8 + ASPP-S.", ASPP_S_RATES, ResNetSpec(RESNET50_STAGES)),
    "deeplab_v2_resnet50_largefov": _v2(
        "DeepLab-v2 ResNet-50 OS8 + LargeFOV.", LARGEFOV_RATES, ResNetSpec(RESNET50_STAGES)),
    "deeplab_v2_demo": _v2(
        "Demo: basic-block ResNet 16-32-64-128 (1 block per stage), OS 8, ASPP r=1..4 (~0.35M).",
        (1, 2, 3, 4), ResNetSpec(widths=(16, 32, 64, 128), **_DEMO_TRUNK), **_DEMO),
    "deeplab_v2_demo_wide": _v2(
        "Demo, wider: basic-block ResNet 24-48-96-192, OS 8, ASPP r=1..4 (~0.77M).",
        (1, 2, 3, 4), ResNetSpec(widths=(24, 48, 96, 192), **_DEMO_TRUNK), **_DEMO),
    "deeplab_v3_resnet50": _v3_resnet(
        "DeepLab-v3: ResNet-50, multi-grid (1, 2, 4), OS 16, BN-ASPP r=6,12,18 + image pooling.",
        RESNET50_STAGES, decoder=False),
    "deeplab_v3_resnet101": _v3_resnet(
        "DeepLab-v3: ResNet-101, multi-grid (1, 2, 4), OS 16, BN-ASPP r=6,12,18 + image pooling.",
        RESNET101_STAGES, decoder=False),
    "deeplab_v3plus_resnet50": _v3_resnet(
        "DeepLab-v3+: ResNet-50 v3 encoder + decoder (stride-4 logits).", RESNET50_STAGES,
        decoder=True),
    "deeplab_v3plus_resnet101": _v3_resnet(
        "DeepLab-v3+: ResNet-101 v3 encoder + decoder (stride-4 logits).",
        RESNET101_STAGES, decoder=True),
    "deeplab_v3plus_xception65": Variant(
        V3_XCEPTION,
        "DeepLab-v3+: aligned Xception-65, separable ASPP and decoder, OS 16 (the TF release).",
        dict(backbone=XceptionSpec(), aspp=ASPPSpec(separable=True),
             decoder=DecoderSpec(separable=True),
             **{**_V3_PAPER, "common": dataclasses.replace(_V3_PAPER["common"],
                                                           input_norm="inception"),
                "norm": NormConfig(momentum=0.9997, epsilon=1e-3)})),
    "deeplab_v3_demo": _v3_demo(
        "Demo v3: v2 demo trunk (basic 16-32-64-128), OS 16, 64-ch BN-ASPP r=1,2,3 (~0.57M).",
        decoder=False),
    "deeplab_v3plus_demo": _v3_demo(
        "Demo v3+: the v3 demo encoder + 64-ch decoder, stride-4 logits (~0.65M).",
        decoder=True),
}


def _variant(name):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def accepted_overrides(name):
    """The flat keyword overrides `get_model(name, ...)` accepts."""
    return tuple(_variant(name).family.overrides)


def override_defaults(name):
    """{override: default} of every flat override of the model `name`."""
    return _variant(name).defaults()


def get_model(name, num_classes, **overrides):
    """Builds the named DeepLab variant with `num_classes` outputs; overrides replace defaults."""
    variant = _variant(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    _reject_unknown(f"model {name!r}", overrides, accepted_overrides(name))
    return variant(num_classes, **overrides)


# Flat-keyword builders, `builder(num_classes, **overrides)`: each family with the defaults of
# its reference model (LargeFOV, v2 ResNet-101 ASPP-L, v3 ResNet-101, v3+ Xception-65).
build_vgg_deeplab = MODELS["deeplab_v1_largefov"]
build_resnet_deeplab = MODELS["deeplab_v2_resnet101_aspp_l"]
build_v3_resnet_deeplab = MODELS["deeplab_v3_resnet101"]
build_v3_xception_deeplab = MODELS["deeplab_v3plus_xception65"]
