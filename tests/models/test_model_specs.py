"""Model specs (frozen dataclasses), the factories built from them, and the registry's mapping of
flat override names onto their fields. Modules are only constructed here (no tracing)."""

import dataclasses

import jax.numpy as jnp
import pytest

from deeplab_jax import models
from deeplab_jax.config import model_overrides as model_config
from deeplab_jax.models import factories, registry
from deeplab_jax.models.heads import aspp_v3, decoder

SPECS = (models.CommonSpec, models.ResNetSpec, models.XceptionSpec, models.VGGSpec,
         models.VGGHeadSpec, models.ASPPV2Spec, models.ASPPSpec, models.DecoderSpec,
         models.PointRendSpec, models.NormConfig)


@pytest.mark.parametrize("spec_cls", SPECS, ids=lambda cls: cls.__name__)
def test_specs_are_frozen_and_hashable(spec_cls):
    spec = spec_cls()
    hash(spec)  # a Flax module attribute must be hashable
    field = dataclasses.fields(spec_cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(spec, field, getattr(spec, field))


def test_sequences_become_tuples():
    """Configs hand over lists; the specs keep tuples so that they stay hashable."""
    spec = models.ResNetSpec(stage_sizes=[1, 1, 1, 2], widths=[4, 4, 8, 8], multi_grid=[1, 2])
    assert spec.stage_sizes == (1, 1, 1, 2) and spec.widths == (4, 4, 8, 8)
    assert spec.multi_grid == (1, 2)
    hash(spec)
    assert models.XceptionSpec(multi_grid=[1, 2, 1]).multi_grid == (1, 2, 1)
    assert models.ASPPSpec(rates=[1, 2]).rates == (1, 2)
    assert models.ASPPV2Spec(rates=[12]).rates == (12,)
    assert models.VGGHeadSpec(aspp_rates=[2, 4]).aspp_rates == (2, 4)
    assert models.VGGHeadSpec().aspp_rates is None  # None selects the fc6-fc7-fc8 head
    assert models.VGGSpec(widths=[8, 8, 16, 16, 16]).widths == (8, 8, 16, 16, 16)


def test_vgg_widths_name_the_five_blocks():
    with pytest.raises(ValueError, match="5 positive block widths"):
        models.VGGSpec(widths=(16, 32, 64, 128))


def test_resnet_stem_width_defaults_to_the_first_stage_width():
    assert models.ResNetSpec().stem == 64
    assert models.ResNetSpec(widths=(16, 32, 64, 128)).stem == 16
    assert models.ResNetSpec(widths=(16, 32, 64, 128), stem_width=8).stem == 8


def test_common_spec_checks_msc_scales():
    assert models.CommonSpec(msc_scales=[1, 0.5]).msc_scales == (1.0, 0.5)
    with pytest.raises(ValueError, match="msc_scales"):
        models.CommonSpec(msc_scales=(0.75, 0.5))  # no scale 1.0 to fuse at
    with pytest.raises(ValueError, match="repeats"):
        models.CommonSpec(msc_scales=(1.0, 1.0))


def test_aspp_rates_are_given_at_output_stride_16():
    spec = models.ASPPSpec(features=64)
    at_os8 = spec.at_output_stride(8)
    assert at_os8.rates == (12, 24, 36) and at_os8.features == 64  # v3 §4.1: rates doubled
    assert spec.at_output_stride(16) == spec
    with pytest.raises(ValueError, match="output_stride=32"):
        models.ASPPSpec(rates=(1, 2, 3)).at_output_stride(32)  # rate 0.5


def test_extra_conv3x3_is_rejected_with_the_decoder():
    """torchvision's extra 3x3 conv belongs to the v3 head; the v3+ head refuses it."""
    aspp = models.ASPPSpec(extra_conv3x3=True)
    assert aspp_v3.DeepLabV3Head(num_classes=3, aspp=aspp).aspp.extra_conv3x3
    with pytest.raises(ValueError, match="extra_conv3x3"):
        decoder.DeepLabV3PlusHead(num_classes=3, aspp=aspp)
    with pytest.raises(ValueError, match="extra_conv3x3"):
        registry.MODELS["deeplab_v3plus_demo"](3, extra_conv3x3=True)


def test_one_resnet_construction_for_v2_and_v3():
    spec = models.ResNetSpec(stage_sizes=(1, 1, 1, 1), widths=(4, 4, 8, 8), block="basic")
    common = models.CommonSpec(output_stride=16, pool_ceil_mode=False, remat=True,
                               dtype=jnp.bfloat16)
    norm = models.NormConfig(frozen=True)
    trunk = factories.backbone_module(spec, common=common, norm=norm)
    assert trunk.spec == spec and trunk.output_stride == 16 and not trunk.pool_ceil_mode
    assert trunk.norm == norm and trunk.remat and trunk.dtype == jnp.bfloat16
    v2 = factories.build_v2_deeplab(3, backbone=spec, head=models.ASPPV2Spec(), common=common,
                                    norm=norm)
    v3 = factories.build_v3_deeplab(
        3, backbone=spec, aspp=models.ASPPSpec(), decoder=models.DecoderSpec(enabled=False),
        pointrend=models.PointRendSpec(enabled=False), common=common, norm=norm)
    assert v2.backbone == v3.backbone == trunk
    with pytest.raises(TypeError, match="ResNetSpec"):
        factories.backbone_module(models.ASPPSpec(), common=common, norm=norm)


def test_the_package_docstring_example_is_the_registered_v3_resnet50():
    specs = dict(
        backbone=models.ResNetSpec((3, 4, 6, 3), multi_grid=(1, 2, 4), stride_on_3x3=True),
        aspp=models.ASPPSpec(), decoder=models.DecoderSpec(enabled=False),
        pointrend=models.PointRendSpec(enabled=False),
        common=models.CommonSpec(output_stride=16, input_norm="imagenet", pool_ceil_mode=False),
        norm=models.NormConfig(momentum=0.9997))
    assert registry.MODELS["deeplab_v3_resnet50"].specs == specs


def test_flat_overrides_reach_their_spec_fields():
    model = models.get_model(
        "deeplab_v3plus_resnet50", 5, output_stride=8, bn_momentum=0.5, stem_width=8,
        aspp_features=32, decoder_low_level_features=12, pointrend=True, pointrend_points=24,
        msc_scales=[1, 0.5], dtype=jnp.bfloat16)
    assert model.backbone.output_stride == 8 and model.backbone.spec.stem == 8
    assert model.backbone.norm.momentum == 0.5 and model.head.norm.momentum == 0.5
    assert model.head.aspp.features == 32 and model.head.aspp.rates == (12, 24, 36)
    assert model.head.decoder.low_level_features == 12
    assert model.point_head.train_points == 24 and model.msc_scales == (1.0, 0.5)
    assert model.dtype == model.backbone.dtype == model.head.dtype == jnp.bfloat16
    xc = models.get_model("deeplab_v3plus_xception65", 5, middle_repeats=2, decoder=False)
    assert xc.backbone.spec.middle_repeats == 2 and isinstance(xc.head, aspp_v3.DeepLabV3Head)
    vgg = models.get_model("deeplab_v1_largefov", 5, fc_width=64, aspp_rates=(2, 4))
    assert vgg.head.width == 64 and vgg.head.rates == (2, 4)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_override_defaults_rebuild_the_registered_specs(name):
    """Passing every default explicitly changes nothing; the config view is the same names."""
    variant = registry.MODELS[name]
    defaults = models.override_defaults(name)
    assert tuple(defaults) == models.accepted_overrides(name)
    assert variant.specs_with(defaults) == variant.specs
    assert set(model_config.model_defaults(name)) == set(defaults)


def test_unknown_and_foreign_overrides_are_rejected():
    with pytest.raises(ValueError, match=r"does not accept override\(s\) \['output_strde'\]; "
                                         r"accepted: stage_sizes, widths"):
        models.get_model("deeplab_v2_demo", 21, output_strde=16)
    # v3-only overrides on a v2 model, ResNet-only ones on Xception, BN ones on VGG.
    for name, override in [("deeplab_v2_demo", "decoder"), ("deeplab_v2_demo", "pointrend"),
                           ("deeplab_v2_resnet50_aspp_l", "aspp_features"),
                           ("deeplab_v3plus_xception65", "stage_sizes"),
                           ("deeplab_v1_largefov", "bn_momentum")]:
        assert override not in models.accepted_overrides(name)
        with pytest.raises(ValueError, match=override):
            models.get_model(name, 21, **{override: 1})
        with pytest.raises(ValueError, match=override):  # the variant itself, without get_model
            registry.MODELS[name](21, **{override: 1})
    with pytest.raises(ValueError, match="unknown model"):
        models.override_defaults("deeplab_v9")


def test_flat_builders_keep_their_defaults():
    """The flat-keyword builders: each family with its reference model's defaults."""
    v2 = models.build_resnet_deeplab(21, aspp_rates=(12,))
    assert v2.head.rates == (12,) and v2.backbone.spec.stage_sizes == (3, 4, 23, 3)
    v3 = models.build_v3_xception_deeplab(21, decoder=False)
    assert isinstance(v3.head, aspp_v3.DeepLabV3Head) and v3.input_norm == "inception"
    assert not isinstance(models.build_v3_resnet_deeplab(21).head, decoder.DeepLabV3PlusHead)
    assert models.build_vgg_deeplab(21).head.fc6_rate == 12
