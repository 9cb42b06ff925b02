"""Backbones: atrous consistency across output strides, parameter counts, rate schedules, sizes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax.models.backbones import resnet, vgg
from tests.helpers.models import (
    abstract_params,
    caffe_pool_reference,
    count_params,
    dilate_kernel,
    numpy_correlate,
    random_variables,
)


LAYOUTS = [
    pytest.param(dict(block="bottleneck", stride_on_3x3=False), id="caffe_bottleneck"),
    pytest.param(dict(block="bottleneck", stride_on_3x3=True), id="torchvision_bottleneck"),
    pytest.param(dict(block="basic", stride_on_3x3=True), id="basic"),
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_atrous_consistency_across_output_strides(layout):
    """deeplab2's check: the OS-4 features subsampled by 2 are the OS-8 ones, and OS 8 -> OS 16.

    Same parameters at every output stride; BatchNorm in inference mode with random statistics
    (a per-pixel affine map, which commutes with subsampling); multi-grid (1, 2) in the last stage.
    33 px input: stride-4 features are 9x9.
    """
    x = jnp.asarray(np.random.default_rng(5).normal(size=(1, 33, 33, 3)), jnp.float32)
    trunk = functools.partial(
        resnet.ResNetSpec, stage_sizes=(1, 1, 1, 2), widths=(4, 4, 8, 8), stem_width=4, **layout
    )

    def small(output_stride, multi_grid=()):
        return resnet.ResNet(trunk(multi_grid=multi_grid), output_stride=output_stride)

    variables = random_variables(small(output_stride=8), x)
    features = {
        os: jax.jit(small(output_stride=os, multi_grid=(1, 2)).apply)(variables, x)
        for os in (4, 8, 16)
    }
    assert [features[os].shape[1] for os in (4, 8, 16)] == [9, 5, 3]
    for dense, sparse in ((4, 8), (8, 16)):
        np.testing.assert_allclose(
            np.asarray(features[dense][:, ::2, ::2]), np.asarray(features[sparse]),
            rtol=1e-4, atol=1e-4, err_msg=f"OS {dense} subsampled != OS {sparse}",
        )
    if not layout["stride_on_3x3"]:
        # The check has teeth: wrong rates in the last stage (multi-grid forgotten) break it.
        wrong = jax.jit(small(output_stride=16).apply)(variables, x)
        assert not np.allclose(np.asarray(features[8][:, ::2, ::2]), np.asarray(wrong), atol=1e-3)


@pytest.mark.parametrize("stride_on_3x3", [False, True])
def test_stride_position_of_the_bottleneck(stride_on_3x3):
    """Caffe layout: the stride sits on the 1x1 reduce (and the 1x1 shortcut), so a strided block
    equals the unstrided block on the input subsampled by 2; with the stride on the 3x3 it does not.
    """
    x = jnp.asarray(np.random.default_rng(7).normal(size=(1, 9, 9, 8)), jnp.float32)
    block = functools.partial(
        resnet.Bottleneck, 4, 16, projection=True, stride_on_3x3=stride_on_3x3
    )
    strided_block = block(plan=resnet.BlockPlan(stride=2))
    variables = random_variables(strided_block, x)
    strided = strided_block.apply(variables, x)
    on_subsampled = block(plan=resnet.BlockPlan(stride=1)).apply(variables, x[:, ::2, ::2])
    assert strided.shape == on_subsampled.shape == (1, 5, 5, 16)
    same = np.allclose(np.asarray(strided), np.asarray(on_subsampled), rtol=1e-5, atol=1e-5)
    assert same != stride_on_3x3


def test_parameter_tree_does_not_depend_on_output_stride():
    trees = [
        jax.tree.map(lambda s: s.shape, abstract_params(
            resnet.ResNet(resnet.ResNetSpec(stage_sizes=(1, 1, 1, 1), widths=(4, 8, 8, 8),
                                            block="basic"), output_stride=os), (1, 33, 33, 3)))
        for os in (4, 8, 16, 32)
    ]
    assert all(tree == trees[0] for tree in trees)


@pytest.mark.parametrize(
    "stage_sizes,torchvision_total",
    [((3, 4, 23, 3), 44_549_160), ((3, 4, 6, 3), 25_557_032)],
    ids=["resnet101", "resnet50"],
)
def test_resnet_parameter_count_matches_torchvision(stage_sizes, torchvision_total):
    variables = abstract_params(resnet.ResNet(resnet.ResNetSpec(stage_sizes)), (1, 65, 65, 3))
    fc_params = 2048 * 1000 + 1000  # the ImageNet classifier DeepLab drops
    assert count_params(variables["params"]) == torchvision_total - fc_params
    # Running statistics: a mean and a variance per BN channel = BN scale + bias count.
    bn_params = sum(
        int(np.prod(v.shape)) for p, v in jax.tree_util.tree_leaves_with_path(variables["params"])
        if "bn" in jax.tree_util.keystr(p)
    )
    assert count_params(variables["batch_stats"]) == bn_params


def test_resnet101_parameter_names_follow_the_documented_scheme():
    params = abstract_params(resnet.ResNet(), (1, 33, 33, 3))["params"]
    assert params["stem"]["conv1"]["conv"]["kernel"].shape == (7, 7, 3, 64)
    assert set(params["stem"]["conv1"]["bn"]) == {"scale", "bias"}
    assert sorted(params) == ["layer2", "layer3", "layer4", "layer5", "stem"]
    assert len(params["layer4"]) == 23
    block1 = params["layer3"]["block1"]
    assert set(block1) == {"reduce", "conv3x3", "increase", "shortcut"}
    assert block1["reduce"]["conv"]["kernel"].shape == (1, 1, 256, 128)
    assert block1["conv3x3"]["conv"]["kernel"].shape == (3, 3, 128, 128)
    assert block1["increase"]["conv"]["kernel"].shape == (1, 1, 128, 512)
    assert block1["shortcut"]["conv"]["kernel"].shape == (1, 1, 256, 512)
    assert "shortcut" not in params["layer3"]["block2"]
    assert "bias" not in block1["reduce"]["conv"]  # no conv bias: BN follows every conv


def test_block_schedule_of_deeplab_v2():
    os8 = resnet.block_schedule((3, 4, 23, 3), 8)
    assert os8[0] == ((1, 1, 1),) * 3
    assert os8[1][0] == (2, 1, 1)  # res3: stride 2
    assert os8[2][0] == (1, 1, 2) and set(os8[2][1:]) == {(1, 2, 2)}  # res4: stride 1, rate 2
    assert os8[3] == ((1, 2, 4), (1, 4, 4), (1, 4, 4))  # res5: rate 4
    os16 = resnet.block_schedule((3, 4, 23, 3), 16)
    assert os16[2][0] == (2, 1, 1) and os16[3] == ((1, 1, 2), (1, 2, 2), (1, 2, 2))
    grid = resnet.block_schedule((3, 4, 6, 3), 16, multi_grid=(1, 2, 4))
    assert [rate for _, _, rate in grid[3]] == [2, 4, 8]
    with pytest.raises(ValueError, match="output_stride"):
        resnet.block_schedule((3, 4, 6, 3), 12)
    with pytest.raises(ValueError, match="multi_grid"):
        resnet.block_schedule((3, 4, 6, 3), 16, multi_grid=(1, 2))


@pytest.mark.parametrize(
    "size,ceil_mode,expected", [(321, True, 41), (513, True, 65), (320, True, 41), (320, False, 40)]
)
def test_resnet_output_sizes(size, ceil_mode, expected):
    model = resnet.ResNet(
        resnet.ResNetSpec(stage_sizes=(1, 1, 1, 1), widths=(4, 4, 4, 4), block="basic"),
        pool_ceil_mode=ceil_mode)
    out = jax.eval_shape(model.apply, abstract_params(model, (1, size, size, 3)),
                         jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    assert out.shape[1:3] == (expected, expected)


def test_vgg16_trunk_count_names_and_size():
    model = vgg.VGG16()
    params = abstract_params(model, (1, 321, 321, 3))["params"]
    assert count_params(params) == 14_714_688  # torchvision vgg16().features
    assert list(params)[:3] == ["conv1_1", "conv1_2", "conv2_1"] and len(params) == 13
    assert params["conv5_3"]["kernel"].shape == (3, 3, 512, 512)
    out = jax.eval_shape(model.apply, {"params": params},
                         jax.ShapeDtypeStruct((1, 321, 321, 3), jnp.float32))
    assert out.shape == (1, 41, 41, 512)


def test_vgg16_trunk_matches_a_numpy_reference():
    """The whole trunk against NumPy: pools 3x3 (stride 2, 2, 2, 1, 1; Caffe ceil mode, padding 1),
    conv5 at rate 2, all other convs rate 1, ReLU after every conv."""
    x = np.random.default_rng(8).uniform(-1, 1, size=(1, 18, 17, 3))
    model = vgg.VGG16()
    variables = random_variables(model, jnp.asarray(x, jnp.float32))
    got = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x, jnp.float32)))

    h = x
    for block, num_convs, _ in vgg.VGG16_BLOCKS:
        rate = 2 if block == 5 else 1
        for index in range(1, num_convs + 1):
            p = variables["params"][f"conv{block}_{index}"]
            kernel = dilate_kernel(np.asarray(p["kernel"], np.float64), rate)
            h = np.maximum(numpy_correlate(h, kernel, rate) + np.asarray(p["bias"]), 0.0)
        stride = 2 if block <= 3 else 1
        channels = [caffe_pool_reference(h[0, :, :, c], 3, stride, 1, True, "max")
                    for c in range(h.shape[-1])]
        h = np.stack(channels, axis=-1)[None]
    # Caffe rounds up: 18 -> 10 -> 6 -> 4 rows (len(range(0, 18, 8)) + 1); 17 -> 9 -> 5 -> 3.
    assert got.shape == h.shape == (1, 4, 3, 512)
    np.testing.assert_allclose(got, h, rtol=1e-4, atol=1e-4)


def test_block_outputs_are_materialised_on_cpu_only(monkeypatch):
    """Each residual block's output is one buffer on XLA:CPU (an optimisation barrier per block of
    a stage of 3 or more blocks, so later blocks' residual sums do not recompute it; shorter stages
    have none); a program lowered for a GPU has none."""
    x = jnp.zeros((1, 33, 33, 3), jnp.float32)
    model = resnet.ResNet(resnet.ResNetSpec(stage_sizes=(3, 2, 1, 1), widths=(4, 4, 8, 8),
                                            stem_width=4), output_stride=8)
    variables = random_variables(model, x)
    traced = jax.jit(model.apply).trace(variables, x)
    lowered = lambda platforms: traced.lower(lowering_platforms=platforms).as_text()
    assert lowered(("cpu",)).count("stablehlo.optimization_barrier") == 3  # the first stage's
    assert "optimization_barrier" not in lowered(("cuda",))
    # The features are those of the model without the barriers (the gradients through them are
    # covered by every training test).
    features = jax.jit(model.apply)(variables, x + 1.0)
    monkeypatch.setattr(resnet, "_materialised_on_cpu", lambda value: value)
    plain = jax.jit(model.apply)(variables, x + 1.0)
    assert float(jnp.abs(features).max()) > 0
    np.testing.assert_allclose(np.asarray(features), np.asarray(plain), rtol=1e-5, atol=1e-6)
