"""v3/v3+ parts: atrous separable conv, BN-ASPP with image pooling, the v3+ decoder.

References are written out in NumPy (convolutions offset by offset, BatchNorm in inference mode,
textbook bilinear resizing) or are torchvision's own ASPP / DeepLabHead fed the same numbers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax.models import layers, separable
from deeplab_jax.models.heads import aspp_v3, decoder
from tests.helpers.models import (
    bilinear_per_pixel,
    block_diagonal,
    count_params,
    dilate_kernel,
    np_conv_bn,
    np_separable,
    numpy_correlate,
    random_variables,
)

def normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize("groups,rate,stride", [(6, 1, 1), (6, 2, 1), (6, 3, 2), (2, 2, 1)])
def test_grouped_atrous_conv_equals_dense_conv_with_block_diagonal_kernel(groups, rate, stride):
    """A depthwise (groups = C) or grouped atrous conv is the dense conv whose kernel is zero
    outside the groups' diagonal blocks; checked against lax's dense conv and NumPy."""
    x = normal((2, 11, 10, 6), seed=groups + rate)
    out = 6 if groups == 6 else 4
    kernel = np.random.default_rng(rate).normal(size=(3, 3, 6 // groups, out))
    grouped = layers.Conv(out, 3, stride=stride, rate=rate, groups=groups, use_bias=False)
    got = np.asarray(grouped.apply({"params": {"kernel": jnp.asarray(kernel, jnp.float32)}}, x))
    dense_kernel = block_diagonal(kernel, groups)
    dense = layers.Conv(out, 3, stride=stride, rate=rate, use_bias=False)
    via_dense = np.asarray(dense.apply(
        {"params": {"kernel": jnp.asarray(dense_kernel, jnp.float32)}}, x))
    want = numpy_correlate(np.asarray(x, np.float64), dilate_kernel(dense_kernel, rate), rate,
                           stride)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, via_dense, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if groups > 1:  # the zeros matter: a full dense kernel gives something else
        full = layers.Conv(out, 3, stride=stride, rate=rate, use_bias=False).apply(
            {"params": {"kernel": jnp.ones((3, 3, 6, out))}}, x)
        assert not np.allclose(got, np.asarray(full), atol=1e-2)


@pytest.mark.parametrize("depthwise_relu,rate,stride", [(True, 2, 1), (False, 1, 2), (True, 3, 2)])
def test_separable_conv_bn_matches_numpy(depthwise_relu, rate, stride):
    x = normal((2, 9, 12, 5), seed=rate)
    module = separable.SeparableConvBN(7, 3, stride=stride, rate=rate,
                                       depthwise_relu=depthwise_relu)
    variables = random_variables(module, x)
    params, stats = variables["params"], variables["batch_stats"]
    assert params["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, 5)
    assert params["pointwise"]["conv"]["kernel"].shape == (1, 1, 5, 7)
    got = np.asarray(jax.jit(module.apply)(variables, x))
    want = np_separable(np.asarray(x, np.float64), params, stats, rate, depthwise_relu, True,
                        stride)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # 9 C + C F weights instead of 9 C F (+ 2 BN parameters per channel of each conv).
    assert count_params(params) == 9 * 5 + 5 * 7 + 2 * (5 + 7)


def np_aspp(x, params, stats, rates, image_pooling=True, separable_branches=False):
    branches = []
    batch, height, width, _ = x.shape
    if image_pooling:
        pooled = x.mean(axis=(1, 2), keepdims=True)
        pooled = np_conv_bn(pooled, params["image_pooling"], stats["image_pooling"])
        branches.append(np.broadcast_to(pooled, (batch, height, width, pooled.shape[-1])))
    branches.append(np_conv_bn(x, params["aspp0"], stats["aspp0"]))
    for i, rate in enumerate(rates):
        name = f"aspp{i + 1}"
        if separable_branches:
            branches.append(np_separable(x, params[name], stats[name], rate))
        else:
            branches.append(np_conv_bn(x, params[name], stats[name], rate))
    concat = np.concatenate(branches, axis=-1)
    return np_conv_bn(concat, params["concat_projection"], stats["concat_projection"])


@pytest.mark.parametrize("image_pooling,separable_branches", [(True, False), (False, True)])
def test_aspp_v3_matches_numpy(image_pooling, separable_branches):
    x = normal((2, 9, 8, 6), seed=3)
    rates = (1, 2, 4)
    head = aspp_v3.ASPPV3(5, rates, image_pooling, separable_branches, dropout_rate=0.0)
    variables = random_variables(head, x)
    got = np.asarray(jax.jit(head.apply)(variables, x))
    want = np_aspp(np.asarray(x, np.float64), variables["params"], variables["batch_stats"], rates,
                   image_pooling, separable_branches)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_aspp_v3_branch_and_pooling_shapes():
    x = normal((2, 7, 9, 6), seed=4)
    head = aspp_v3.ASPPV3(8, (1, 2, 3), dropout_rate=0.0)
    variables = random_variables(head, x)
    out, state = head.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"]
    assert inter["image_pooling"]["__call__"][0].shape == (2, 1, 1, 8)  # global pool, 1x1 conv
    for name in ("aspp0", "aspp1", "aspp2", "aspp3"):
        assert inter[name]["__call__"][0].shape == (2, 7, 9, 8)
    assert out.shape == (2, 7, 9, 8)
    params = variables["params"]
    assert sorted(params) == ["aspp0", "aspp1", "aspp2", "aspp3", "concat_projection",
                              "image_pooling"]
    assert params["concat_projection"]["conv"]["kernel"].shape == (1, 1, 5 * 8, 8)
    assert params["aspp0"]["conv"]["kernel"].shape == (1, 1, 6, 8)
    assert params["aspp2"]["conv"]["kernel"].shape == (3, 3, 6, 8)
    assert "bias" not in params["aspp2"]["conv"]  # BN follows every conv
    # The pooling branch is constant over the map and depends on the mean only.
    pooled = np.asarray(inter["concat_projection"]["__call__"][0])
    assert pooled.shape == (2, 7, 9, 8)
    shuffled = x[:, ::-1, ::-1]  # same mean, different layout: pooling output unchanged
    _, state_s = head.apply(variables, shuffled, capture_intermediates=True,
                            mutable=["intermediates"])
    np.testing.assert_allclose(np.asarray(state_s["intermediates"]["image_pooling"]["__call__"][0]),
                               np.asarray(inter["image_pooling"]["__call__"][0]), atol=1e-5)


@pytest.mark.parametrize("rates", [(), (6, 0), (6, -12, 18), (6.0, 12, 18), ("6",)])
def test_aspp_v3_rejects_bad_rates(rates):
    x = jax.ShapeDtypeStruct((1, 9, 9, 4), jnp.float32)
    with pytest.raises(ValueError, match="aspp_rates"):
        jax.eval_shape(aspp_v3.ASPPV3(8, rates).init, jax.random.key(0), x)
    with pytest.raises(ValueError, match="aspp_rates"):
        aspp_v3.rates_for_output_stride(rates, 16)


def test_rates_double_at_output_stride_8():
    assert aspp_v3.rates_for_output_stride((6, 12, 18), 16) == (6, 12, 18)
    assert aspp_v3.rates_for_output_stride((6, 12, 18), 8) == (12, 24, 36)  # v3 §4.1, torchvision
    assert aspp_v3.rates_for_output_stride((6, 12, 18), 4) == (24, 48, 72)
    assert aspp_v3.rates_for_output_stride((6, 12, 18), 32) == (3, 6, 9)
    with pytest.raises(ValueError, match="output_stride=32"):
        aspp_v3.rates_for_output_stride((1, 2, 3), 32)  # rate 0.5
    with pytest.raises(ValueError, match="output_stride"):
        aspp_v3.rates_for_output_stride((6, 12, 18), 0)


def test_decoder_skip_shapes_and_values():
    encoder = normal((2, 3, 4, 10), seed=5)  # stride 16 of a 33x49 input
    low_level = normal((2, 9, 13, 6), seed=6)  # stride 4
    module = decoder.DecoderV3Plus(low_level_features=3, features=8)
    variables = random_variables(module, encoder, low_level)
    out, state = module.apply(variables, encoder, low_level, capture_intermediates=True,
                              mutable=["intermediates"])
    inter = state["intermediates"]
    assert inter["feature_projection0"]["__call__"][0].shape == (2, 9, 13, 3)  # 48 in the paper
    params, stats = variables["params"], variables["batch_stats"]
    assert params["decoder_conv0"]["conv"]["kernel"].shape == (3, 3, 10 + 3, 8)  # concatenated
    assert params["decoder_conv1"]["conv"]["kernel"].shape == (3, 3, 8, 8)
    assert out.shape == (2, 9, 13, 8)
    # NumPy: encoder upsampled (aligned corners) to the low-level size, concatenated first.
    up = np.stack([bilinear_per_pixel(np.asarray(e, np.float64), 9, 13, True) for e in encoder])
    low = np_conv_bn(np.asarray(low_level, np.float64), params["feature_projection0"],
                     stats["feature_projection0"])
    h = np.concatenate([up, low], axis=-1)
    h = np_conv_bn(h, params["decoder_conv0"], stats["decoder_conv0"])
    h = np_conv_bn(h, params["decoder_conv1"], stats["decoder_conv1"])
    np.testing.assert_allclose(np.asarray(out), h, rtol=1e-4, atol=1e-4)


def test_decoder_separable_convs_and_head():
    encoder = normal((1, 3, 3, 10), seed=7)
    low_level = normal((1, 9, 9, 6), seed=8)
    head = decoder.DeepLabV3PlusHead(
        4, aspp=aspp_v3.ASPPSpec(rates=(1, 2), features=8, separable=True, dropout_rate=0.0),
        decoder=decoder.DecoderSpec(low_level_features=3, features=8, separable=True))
    variables = random_variables(head, encoder, low_level)
    params = variables["params"]
    assert set(params) == {"aspp", "decoder", "logits"}
    assert set(params["decoder"]["decoder_conv0"]) == {"depthwise", "pointwise"}
    assert params["decoder"]["decoder_conv0"]["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, 11)
    assert set(params["aspp"]["aspp1"]) == {"depthwise", "pointwise"}
    assert params["logits"]["kernel"].shape == (1, 1, 8, 4) and "bias" in params["logits"]
    logits = head.apply(variables, encoder, low_level)
    assert logits.shape == (1, 9, 9, 4)  # stride-4 logits
    with pytest.raises(ValueError, match="batch sizes"):
        head.apply(variables, encoder, jnp.concatenate([low_level, low_level]))


def _torch_conv_bn(conv, bn, params, stats):
    import torch

    conv.weight.data = torch.tensor(np.asarray(params["conv"]["kernel"]).transpose(3, 2, 0, 1))
    bn.weight.data = torch.tensor(np.asarray(params["bn"]["scale"]))
    bn.bias.data = torch.tensor(np.asarray(params["bn"]["bias"]))
    bn.running_mean.data = torch.tensor(np.asarray(stats["bn"]["mean"]))
    bn.running_var.data = torch.tensor(np.asarray(stats["bn"]["var"]))


def test_v3_head_equals_torchvision_deeplabhead():
    """torchvision's DeepLabHead (ASPP r=12,24,36 + 3x3 conv + classifier) with our weights.

    Its concatenation is [1x1, atrous x3, pooling]; ours puts pooling first (TF order), so its
    projection kernel takes our input rows rotated by one 256-channel block.
    """
    torch = pytest.importorskip("torch", reason="torch is not installed (optional reference)")
    segmentation = pytest.importorskip(
        "torchvision.models.segmentation.deeplabv3",
        reason="torchvision is not installed (optional reference)")
    x = normal((2, 13, 11, 4), seed=9)
    ours = aspp_v3.DeepLabV3Head(3, aspp=aspp_v3.ASPPSpec(rates=(12, 24, 36), extra_conv3x3=True))
    variables = random_variables(ours, x)
    p, s = variables["params"], variables["batch_stats"]
    theirs = segmentation.DeepLabHead(4, 3).eval()
    aspp = theirs[0]
    for i, name in enumerate(["aspp0", "aspp1", "aspp2", "aspp3"]):
        _torch_conv_bn(aspp.convs[i][0], aspp.convs[i][1], p["aspp"][name], s["aspp"][name])
    _torch_conv_bn(aspp.convs[4][1], aspp.convs[4][2], p["aspp"]["image_pooling"],
                   s["aspp"]["image_pooling"])
    projection = dict(p["aspp"]["concat_projection"])
    kernel = np.asarray(projection["conv"]["kernel"])
    projection["conv"] = {"kernel": np.concatenate([kernel[:, :, 256:], kernel[:, :, :256]], 2)}
    _torch_conv_bn(aspp.project[0], aspp.project[1], projection, s["aspp"]["concat_projection"])
    _torch_conv_bn(theirs[1], theirs[2], p["conv3x3"], s["conv3x3"])
    theirs[4].weight.data = torch.tensor(np.asarray(p["logits"]["kernel"]).transpose(3, 2, 0, 1))
    theirs[4].bias.data = torch.tensor(np.asarray(p["logits"]["bias"]))
    with torch.no_grad():
        want = theirs(torch.tensor(np.asarray(x).transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(jax.jit(ours.apply)(variables, x))
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
