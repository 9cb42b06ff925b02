"""inference.prepare: BatchNorm folded into the convolutions gives the same logits for every model
family (v1 VGG without BatchNorm, v2 ResNet, v3/v3+ ResNet, v3+ Xception with separable convs,
PointRend, MSC, remat), leaves the unprepared models' parameter tree alone, and refuses training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import models
from deeplab_jax.inference import prepare
from deeplab_jax.inference.prepare import fold_conv_bn

from tests.helpers.models import batchnorm_model, forward, images, relative_error

TINY_V2 = dict(stage_sizes=(1, 1, 2, 1), widths=(4, 4, 8, 8))
TINY_V3 = dict(stage_sizes=(1, 1, 1, 3), widths=(4, 4, 8, 8), aspp_features=8,
               decoder_features=8, decoder_low_level_features=4)
TINY_XCEPTION = dict(middle_repeats=1, width_multiplier=0.125, aspp_features=8,
                     decoder_features=8, decoder_low_level_features=4)
CASES = {
    "v2_resnet_aspp_l": ("deeplab_v2_resnet50_aspp_l", TINY_V2),
    "v2_demo_msc": ("deeplab_v2_demo", dict(msc_scales=(1.0, 0.5))),
    "v2_remat": ("deeplab_v2_resnet50_largefov", dict(TINY_V2, remat=True)),
    "v3_resnet": ("deeplab_v3_resnet50", TINY_V3),
    "v3plus_resnet_separable": ("deeplab_v3plus_resnet50",
                                dict(TINY_V3, aspp_separable=True, decoder_separable=True)),
    "v3plus_xception": ("deeplab_v3plus_xception65", TINY_XCEPTION),
    "v3plus_pointrend": ("deeplab_v3plus_demo", dict(pointrend=True,
                                                     pointrend_subdivision_points=64)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_prepared_model_equals_the_original(case):
    model, variables = batchnorm_model(*CASES[case])
    prepared_model, prepared_variables = prepare(model, variables)
    x = images()
    expected = forward(model, variables, x, train=False)
    actual = forward(prepared_model, prepared_variables, x, train=False)
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) <= 1e-4
    assert "batch_stats" not in prepared_variables
    leaves = jax.tree_util.tree_leaves_with_path(prepared_variables["params"])
    assert not any("'bn'" in jax.tree_util.keystr(path) for path, _ in leaves)
    # The original model and variables are untouched (prepare copies what it changes).
    np.testing.assert_array_equal(forward(model, variables, x, train=False), expected)


def test_vgg_without_batchnorm_is_returned_unchanged():
    model = models.get_model("deeplab_v1_largefov", 5, fc_width=16)
    variables = jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                           images(batch=1), train=False))
    prepared_model, prepared_variables = prepare(model, variables)
    assert prepared_model is model
    assert jax.tree.structure(prepared_variables) == jax.tree.structure(variables)


def test_unprepared_parameter_paths_keep_conv_and_bn():
    model = models.get_model("deeplab_v2_demo", 5)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), images(batch=1)))["params"]
    unit = params["backbone"]["stem"]["conv1"]
    assert set(unit) == {"conv", "bn"} and set(unit["conv"]) == {"kernel"}
    assert not model.backbone.norm.folded


def test_folded_unit_holds_a_conv_bias_and_the_config_says_folded():
    model, variables = batchnorm_model(*CASES["v3plus_xception"])
    prepared_model, prepared_variables = prepare(model, variables)
    assert prepared_model.backbone.norm.folded and prepared_model.head.norm.folded
    assert not model.backbone.norm.folded
    unit = prepared_variables["params"]["backbone"]["entry_flow"]["block1"]["unit1"]
    depthwise = unit["separable_conv1"]["depthwise"]
    assert set(depthwise) == {"conv"} and set(depthwise["conv"]) == {"kernel", "bias"}


def test_fold_formula_per_output_channel():
    rng = np.random.default_rng(3)
    kernel, bias, mean = (rng.normal(size=shape).astype(np.float32)
                          for shape in ((3, 3, 2, 4), 4, 4))
    scale, var = (rng.uniform(0.5, 2, 4).astype(np.float32) for _ in range(2))
    bn, stats = {"scale": scale, "bias": bias}, {"mean": mean, "var": var}
    folded = fold_conv_bn({"kernel": jnp.asarray(kernel)}, bn, stats, 1e-3)
    scale = bn["scale"] / np.sqrt(stats["var"] + 1e-3)
    np.testing.assert_allclose(folded["kernel"], kernel * scale, rtol=1e-6)
    np.testing.assert_allclose(folded["bias"], bn["bias"] - stats["mean"] * scale, rtol=1e-5,
                               atol=1e-6)


def test_prepared_model_refuses_training_and_a_second_prepare():
    model, variables = batchnorm_model(*CASES["v2_resnet_aspp_l"])
    prepared_model, prepared_variables = prepare(model, variables)
    with pytest.raises(ValueError, match="folded"):
        prepared_model.apply(prepared_variables, images(), train=True)
    with pytest.raises(ValueError, match="already prepared"):
        prepare(prepared_model, prepared_variables)


def test_missing_batch_stats_is_reported():
    model, variables = batchnorm_model(*CASES["v2_resnet_aspp_l"])
    with pytest.raises(ValueError, match="batch_stats"):
        prepare(model, {"params": variables["params"]})


def test_epsilon_of_each_unit_is_used():
    """Xception's BatchNorm epsilon is 1e-3 (ResNet's 1e-5): with a running variance of 1e-3 the
    two would fold to kernels 1.4x apart."""
    model, variables = batchnorm_model(*CASES["v3plus_xception"])
    assert model.backbone.norm.epsilon == 1e-3
    path = ("backbone", "entry_flow", "block1", "unit1", "separable_conv1", "depthwise")
    unit_stats = variables["batch_stats"]
    unit_params = variables["params"]
    for key in path:
        unit_stats, unit_params = unit_stats[key], unit_params[key]
    unit_stats["bn"]["var"] = jnp.full_like(unit_stats["bn"]["var"], 1e-3)
    _, prepared_variables = prepare(model, variables)
    folded = prepared_variables["params"]
    for key in path:
        folded = folded[key]
    scale = (unit_params["bn"]["scale"] / jnp.sqrt(1e-3 + 1e-3)).reshape(1, 1, 1, -1)
    np.testing.assert_allclose(folded["conv"]["kernel"], unit_params["conv"]["kernel"] * scale,
                               rtol=1e-5)
