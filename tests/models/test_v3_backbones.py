"""v3/v3+ backbones: aligned Xception-65 (atrous consistency, TF layout, parameter count, timm) and
the ResNet endpoints the decoder and PointRend read.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax.models.backbones import resnet, xception
from tests.helpers.models import (
    XCEPTION65_TF_COUNT,
    abstract_params,
    count_params,
    np_conv_bn,
    np_separable,
    random_variables,
)

# A small Xception with the real topology: every width / 16, one middle-flow unit.
TINY_XCEPTION = dict(width_multiplier=1 / 16, middle_repeats=1)


def _input(size, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(1, size, size, 3)), jnp.float32)


def test_xception_atrous_consistency_at_every_output_stride():
    """deeplab2's check: features at OS s, subsampled by 2, equal those at OS 2s (same weights).

    33 px: the stride-2 convs give 17, 9, 5, 3, 2, so OS 4/8/16/32 features are 9/5/3/2 wide.
    Multi-grid (1, 2, 1) in exit block2; BN in inference mode with random statistics.
    """
    x = _input(33)
    small = functools.partial(
        xception.Xception, xception.XceptionSpec(multi_grid=(1, 2, 1), **TINY_XCEPTION))
    variables = random_variables(small(output_stride=16), x)
    features = {os: jax.jit(small(output_stride=os).apply)(variables, x) for os in (4, 8, 16, 32)}
    assert [features[os].shape[1] for os in (4, 8, 16, 32)] == [9, 5, 3, 2]
    assert features[16].shape[-1] == 128  # 2048 / 16
    for dense, sparse in ((4, 8), (8, 16), (16, 32)):
        np.testing.assert_allclose(
            np.asarray(features[dense][:, ::2, ::2]), np.asarray(features[sparse]),
            rtol=1e-4, atol=1e-4, err_msg=f"OS {dense} subsampled != OS {sparse}",
        )
    # The check has teeth: without the multi-grid in the dense model the rates are wrong.
    wrong = jax.jit(xception.Xception(xception.XceptionSpec(**TINY_XCEPTION),
                                      output_stride=8).apply)(variables, x)
    assert not np.allclose(np.asarray(wrong[:, ::2, ::2]), np.asarray(features[16]), atol=1e-3)


def test_xception_unit_schedule_follows_tf_stack_blocks_dense():
    # (stride, rate) of entry 1-3, middle (first unit), exit 1-2.
    def flat(os):
        return [units[0] for units in xception.unit_schedule(os)]

    assert flat(32) == [(2, 1), (2, 1), (2, 1), (1, 1), (2, 1), (1, 1)]
    assert flat(16) == [(2, 1), (2, 1), (2, 1), (1, 1), (1, 1), (1, 2)]
    assert flat(8) == [(2, 1), (2, 1), (1, 1), (1, 2), (1, 2), (1, 4)]
    with pytest.raises(ValueError, match="output_stride"):
        xception.unit_schedule(12)


def _tf_xception65_trainable_count():
    """Trainable variables of TF models/research/deeplab core/xception.py `xception_65` (no logits),
    written from that file's block table: conv kernels without biases (every conv has
    normalizer_fn=batch_norm) and BatchNorm gamma + beta (xception_arg_scope batch_norm_scale=True).
    """

    def conv(k, cin, cout):
        return k * k * cin * cout + 2 * cout

    def separable(cin, cout):  # <name>_depthwise (k, k, cin, 1) + BN, <name>_pointwise + BN
        return 9 * cin + 2 * cin + cin * cout + 2 * cout

    total = conv(3, 3, 32) + conv(3, 32, 64)  # entry_flow/conv1_1, conv1_2
    table = [((128,) * 3, "conv", 1), ((256,) * 3, "conv", 1), ((728,) * 3, "conv", 1),
             ((728,) * 3, "sum", 16), ((728, 1024, 1024), "conv", 1),
             ((1536, 1536, 2048), "none", 1)]
    cin = 64
    for depths, skip, units in table:
        for _ in range(units):
            c = cin
            for depth in depths:
                total += separable(c, depth)
                c = depth
            if skip == "conv":
                total += conv(1, cin, depths[-1])
            cin = depths[-1]
    return total


def test_xception65_parameter_count_matches_the_tf_definition():
    assert _tf_xception65_trainable_count() == XCEPTION65_TF_COUNT
    variables = abstract_params(xception.Xception(), (1, 33, 33, 3))
    assert count_params(variables["params"]) == XCEPTION65_TF_COUNT
    # moving_mean + moving_variance per BN channel.
    bn = sum(int(np.prod(v.shape)) for p, v in
             jax.tree_util.tree_leaves_with_path(variables["params"]) if "bn" in str(p))
    assert count_params(variables["batch_stats"]) == bn
    params = variables["params"]
    assert sorted(params) == ["entry_flow", "exit_flow", "middle_flow"]
    assert len(params["middle_flow"]["block1"]) == 16
    unit = params["entry_flow"]["block2"]["unit1"]
    assert set(unit) == {"separable_conv1", "separable_conv2", "separable_conv3", "shortcut"}
    assert unit["separable_conv1"]["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, 128)
    assert unit["separable_conv1"]["pointwise"]["conv"]["kernel"].shape == (1, 1, 128, 256)
    assert "shortcut" not in params["middle_flow"]["block1"]["unit1"]
    assert "shortcut" not in params["exit_flow"]["block2"]["unit1"]


def test_xception_endpoints_and_low_level_features():
    model = xception.Xception()
    variables = abstract_params(model, (1, 65, 65, 3))
    features, endpoints = jax.eval_shape(
        functools.partial(model.apply, return_endpoints=True), variables,
        jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32))
    assert features.shape == (1, 5, 5, 2048)
    assert endpoints[model.LOW_LEVEL_ENDPOINT].shape == (1, 17, 17, 256)  # stride 4, 256 ch
    assert endpoints["entry_flow/conv1_2"].shape == (1, 33, 33, 64)
    assert endpoints["middle_flow/block1"].shape == (1, 5, 5, 728)
    assert endpoints["exit_flow/block2"].shape == features.shape


def _timm_tiny_xception_and_ours():
    """timm's XceptionAligned (an independent port of the TF deeplab Xception, loading its ported
    checkpoints) with Xception-65's widths but one middle unit, and our equivalent."""
    timm_xception = pytest.importorskip(
        "timm.models.xception_aligned", reason="timm is not installed (optional reference)")
    import torch

    cfg = [dict(in_chs=64, out_chs=128, stride=2), dict(in_chs=128, out_chs=256, stride=2),
           dict(in_chs=256, out_chs=728, stride=2), dict(in_chs=728, out_chs=728, stride=1),
           dict(in_chs=728, out_chs=(728, 1024, 1024), stride=2),
           dict(in_chs=1024, out_chs=(1536, 1536, 2048), stride=1, no_skip=True,
                start_with_relu=False)]
    theirs = timm_xception.XceptionAligned(
        cfg, num_classes=0, output_stride=16,
        norm_layer=functools.partial(torch.nn.BatchNorm2d, eps=1e-3)).eval()
    return theirs, xception.Xception(xception.XceptionSpec(middle_repeats=1), output_stride=16)


def _copy_into_timm(theirs, variables):
    import torch

    params, stats = variables["params"], variables["batch_stats"]

    def conv_bn(conv, bn, p, s):
        conv.weight.data = torch.tensor(np.asarray(p["conv"]["kernel"]).transpose(3, 2, 0, 1))
        bn.weight.data = torch.tensor(np.asarray(p["bn"]["scale"]))
        bn.bias.data = torch.tensor(np.asarray(p["bn"]["bias"]))
        bn.running_mean.data = torch.tensor(np.asarray(s["bn"]["mean"]))
        bn.running_var.data = torch.tensor(np.asarray(s["bn"]["var"]))

    entry_p, entry_s = params["entry_flow"], variables["batch_stats"]["entry_flow"]
    conv_bn(theirs.stem[0].conv, theirs.stem[0].bn, entry_p["conv1_1"], entry_s["conv1_1"])
    conv_bn(theirs.stem[1].conv, theirs.stem[1].bn, entry_p["conv1_2"], entry_s["conv1_2"])
    units = [("entry_flow", "block1"), ("entry_flow", "block2"), ("entry_flow", "block3"),
             ("middle_flow", "block1"), ("exit_flow", "block1"), ("exit_flow", "block2")]
    for block, (flow, name) in zip(theirs.blocks, units):
        p, s = params[flow][name]["unit1"], stats[flow][name]["unit1"]
        for i in range(3):
            sep = getattr(block.stack, f"conv{i + 1}")
            key = f"separable_conv{i + 1}"
            conv_bn(sep.conv_dw, sep.bn_dw, p[key]["depthwise"], s[key]["depthwise"])
            conv_bn(sep.conv_pw, sep.bn_pw, p[key]["pointwise"], s[key]["pointwise"])
        if block.shortcut is not None:
            conv_bn(block.shortcut.conv, block.shortcut.bn, p["shortcut"], s["shortcut"])


def test_xception_equals_timm_aligned_xception_with_the_same_weights():
    """Same numbers through timm's XceptionAligned (ReLU placement, strides, padding, atrous
    rates at OS 16, shortcuts) and ours: equal features."""
    import torch

    theirs, ours = _timm_tiny_xception_and_ours()
    x = _input(33, seed=3)
    variables = random_variables(ours, x)
    _copy_into_timm(theirs, variables)
    with torch.no_grad():
        want = theirs.forward_features(torch.tensor(np.asarray(x).transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(jax.jit(ours.apply)(variables, x))
    assert got.shape == (1, 3, 3, 2048)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), rtol=1e-3, atol=1e-4 * scale)


def test_xception65_count_equals_timm_xception65():
    timm = pytest.importorskip("timm", reason="timm is not installed (optional reference)")
    theirs = timm.create_model("xception65", pretrained=False, num_classes=0)
    assert sum(p.numel() for p in theirs.parameters()) == XCEPTION65_TF_COUNT


@pytest.mark.parametrize("block,stride_on_3x3", [("bottleneck", True), ("basic", True),
                                                 ("bottleneck", False)])
def test_resnet_endpoints_are_backward_compatible(block, stride_on_3x3):
    """return_endpoints=False returns exactly the old output; the endpoints are the stages'."""
    spec = resnet.ResNetSpec(stage_sizes=(1, 1, 1, 3), widths=(4, 4, 8, 8), stem_width=4,
                             block=block, stride_on_3x3=stride_on_3x3, multi_grid=(1, 2, 4))
    model = resnet.ResNet(spec, output_stride=16, pool_ceil_mode=False)
    x = _input(65, seed=4)
    variables = random_variables(model, x)
    plain = jax.jit(model.apply)(variables, x)
    features, endpoints = jax.jit(functools.partial(model.apply, return_endpoints=True))(
        variables, x)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(features))
    np.testing.assert_array_equal(np.asarray(endpoints["layer5"]), np.asarray(features))
    assert model.LOW_LEVEL_ENDPOINT == "layer2"
    expansion = 4 if block == "bottleneck" else 1
    assert endpoints["layer2"].shape == (1, 17, 17, 4 * expansion)  # stride 4
    assert endpoints["layer3"].shape[1] == 9 and endpoints["layer4"].shape[1] == 5
    assert endpoints["stem"].shape == (1, 17, 17, 4)


def test_resnet_v3_multigrid_atrous_consistency():
    """The v3 trunk (torchvision layout, multi-grid (1, 2, 4) over 3 blocks): OS 8 subsampled =
    OS 16, OS 16 subsampled = OS 32."""
    spec = resnet.ResNetSpec(stage_sizes=(1, 1, 1, 3), widths=(4, 4, 8, 8), stem_width=4,
                             stride_on_3x3=True, multi_grid=(1, 2, 4))
    small = functools.partial(resnet.ResNet, spec, pool_ceil_mode=False)
    x = _input(65, seed=5)
    variables = random_variables(small(output_stride=16), x)
    features = {os: jax.jit(small(output_stride=os).apply)(variables, x) for os in (8, 16, 32)}
    assert [features[os].shape[1] for os in (8, 16, 32)] == [9, 5, 3]
    for dense, sparse in ((8, 16), (16, 32)):
        np.testing.assert_allclose(np.asarray(features[dense][:, ::2, ::2]),
                                   np.asarray(features[sparse]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "skip,stride,inside,relu_after_depthwise",
    [("conv", 2, False, False), ("sum", 1, False, True), ("none", 1, True, False)])
def test_xception_unit_matches_numpy(skip, stride, inside, relu_after_depthwise):
    """TF's xception_module: ReLU before each separable conv (or inside it, exit block2), BN after
    the depthwise and the pointwise conv, stride on the third, then the shortcut."""
    x = _input(9, seed=6)[..., :3].repeat(2, axis=-1)  # 6 channels
    depths = (6, 6, 6) if skip == "sum" else (4, 5, 7)
    rates = (1, 2, 1)
    unit = xception.XceptionUnit(depths, skip, stride, rates, activation_inside=inside,
                                 relu_after_depthwise=relu_after_depthwise)
    variables = random_variables(unit, x)
    (got, outputs) = jax.jit(unit.apply)(variables, x)
    p, s = variables["params"], variables["batch_stats"]
    h = np.asarray(x, np.float64)
    for i, rate in enumerate(rates):
        if not inside:
            h = np.maximum(h, 0.0)
        h = np_separable(h, p[f"separable_conv{i + 1}"], s[f"separable_conv{i + 1}"], rate,
                         depthwise_relu=inside or relu_after_depthwise, relu=inside,
                         stride=stride if i == 2 else 1)
        if i == 1:
            np.testing.assert_allclose(np.asarray(outputs[1]), h, rtol=1e-4, atol=1e-4)
    if skip == "conv":
        h = h + np_conv_bn(np.asarray(x, np.float64), p["shortcut"], s["shortcut"], relu=False,
                           stride=stride)
    elif skip == "sum":
        h = h + np.asarray(x, np.float64)
    assert got.shape == h.shape == (1, 5 if stride == 2 else 9, 5 if stride == 2 else 9,
                                    depths[-1])
    np.testing.assert_allclose(np.asarray(got), h, rtol=1e-4, atol=1e-4)
