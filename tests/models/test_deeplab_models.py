"""DeepLab models: registry contract, output sizes, MSC, BN freezing, dropout, dtype, remat."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import models
from deeplab_jax.models.backbones import resnet
from tests.helpers.models import abstract_init, bilinear_per_pixel, count_params, random_variables

REQUIRED_NAMES = (
    "deeplab_v1_largefov", "deeplab_v1_vgg16_7x7", "deeplab_v1_vgg16_4x4_r4",
    "deeplab_v1_vgg16_4x4_r8", "deeplab_v2_resnet101_aspp_l", "deeplab_v2_resnet101_aspp_s",
    "deeplab_v2_resnet101_largefov", "deeplab_v2_resnet50_aspp_l", "deeplab_v2_demo",
    "deeplab_v2_demo_wide",
)
COMMON_OVERRIDES = ("output_stride", "msc_scales", "bn_frozen", "dtype", "input_norm",
                    "dropout_rate", "aspp_rates", "remat", "pool_ceil_mode")
# The demo architecture at a width that keeps compile and run times of behaviour tests small.
TINY = dict(widths=(4, 4, 8, 8))


def images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, size=shape), jnp.uint8)


# Hand-derived size rules. 3x3/2 pool, padding 1: Caffe (ceil) n // 2 + 1, floor (n + 1) // 2;
# 7x7/2 conv (padding 3) and the stride-2 1x1/3x3 convs: (n + 1) // 2.
def caffe_pool(n):
    return n // 2 + 1


def half(n):
    return (n + 1) // 2


def expected_size(name, n, output_stride=8, ceil=True):
    pool = caffe_pool if ceil else half
    if "vgg16" in name or name.startswith("deeplab_v1"):
        return pool(pool(pool(n)))
    n = half(pool(half(n)))  # conv1, pool1, res3 (output stride 8)
    return half(n) if output_stride == 16 else n


def test_registry_names_and_overrides():
    assert isinstance(models.MODELS, dict)
    assert set(REQUIRED_NAMES) <= set(models.MODELS)
    for name in models.MODELS:
        assert set(COMMON_OVERRIDES) <= set(models.accepted_overrides(name)), name
        assert isinstance(models.get_model(name, 3), models.DeepLab)
    with pytest.raises(ValueError, match="deeplab_v1_largefov"):  # lists the known names
        models.get_model("deeplab_v9", 21)
    with pytest.raises(ValueError, match="output_strde"):
        models.get_model("deeplab_v2_demo", 21, output_strde=16)
    with pytest.raises(ValueError, match="num_classes"):
        models.get_model("deeplab_v2_demo", 0)
    with pytest.raises(ValueError, match="output stride 8"):
        models.get_model("deeplab_v1_largefov", 21, output_stride=16)
    with pytest.raises(ValueError, match="msc_scales"):
        models.get_model("deeplab_v2_demo", 21, msc_scales=(0.75, 0.5))


def test_defaults_follow_the_release_and_the_demo():
    paper = models.get_model("deeplab_v2_resnet101_aspp_l", 21)
    assert paper.input_norm == "caffe_bgr" and paper.backbone.norm.frozen
    assert paper.backbone.norm.momentum == 0.999 and paper.backbone.norm.epsilon == 1e-5
    assert models.get_model("deeplab_v1_largefov", 21).input_norm == "caffe_bgr"
    demo = models.get_model("deeplab_v2_demo", 8)
    assert demo.input_norm == "imagenet" and not demo.backbone.norm.frozen
    wide = models.get_model("deeplab_v2_demo_wide", 8, widths=(8, 16, 32, 64), aspp_rates=(2, 4))
    assert wide.backbone.spec.widths == (8, 16, 32, 64) and wide.head.rates == (2, 4)


@pytest.mark.parametrize(
    "name,paper_millions",
    [("deeplab_v1_largefov", 20.5), ("deeplab_v1_vgg16_7x7", 134.3)],
)
def test_v1_parameter_counts_match_the_paper(name, paper_millions):
    """§4.1.1: "DeepLab-LargeFOV ... has significantly fewer parameters (20.5M instead of 134.3M)"."""
    variables, _ = abstract_init(models.get_model(name, 21), (1, 65, 65, 3))
    total = count_params(variables["params"])
    assert abs(total / 1e6 - paper_millions) < 0.05, total


def test_v1_demo_is_a_narrow_vgg16_largefov():
    """VGG-16's 13 convs at the given widths, LargeFOV's fc6 (3x3) - fc7 - fc8, all with biases."""
    widths, fc, classes = (8, 16, 32, 64, 64), 128, 8
    model = models.get_model("deeplab_v1_demo", classes)
    assert model.backbone.spec.widths == widths and model.head.width == fc
    assert model.input_norm == "imagenet" and not model.backbone.pool_ceil_mode
    expected, channels = 0, 3
    for width, convs in zip(widths, (2, 2, 3, 3, 3)):
        for _ in range(convs):
            expected += 9 * channels * width + width
            channels = width
    expected += (9 * channels * fc + fc) + (fc * fc + fc) + (fc * classes + classes)
    variables, _ = abstract_init(model, (1, 65, 65, 3))
    assert count_params(variables["params"]) == expected == 321_968
    wider = models.get_model("deeplab_v1_demo", classes, widths=(16, 32, 64, 128, 128))
    assert wider.backbone.spec.widths == (16, 32, 64, 128, 128)


@pytest.mark.parametrize(
    "name,backbone_params,num_rates",
    [("deeplab_v2_resnet101_aspp_l", 44_549_160 - 2_049_000, 4),
     ("deeplab_v2_resnet50_aspp_s", 25_557_032 - 2_049_000, 4)],
)
def test_v2_parameter_counts(name, backbone_params, num_rates):
    """torchvision ResNet without its fc layer, plus 3x3 2048 -> K classifiers with bias."""
    variables, _ = abstract_init(models.get_model(name, 21), (1, 65, 65, 3))
    assert count_params(variables["params"]["backbone"]) == backbone_params
    assert count_params(variables["params"]["head"]) == num_rates * (9 * 2048 * 21 + 21)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_output_shape_of_every_model(name):
    variables, logits = abstract_init(models.get_model(name, 21), (2, 65, 65, 3))
    # v1/v2 at output stride 8; v3 at 16 (its training default); v3+ decodes to stride 4.
    stride = 4 if "v3plus" in name else 16 if name.startswith("deeplab_v3") else 8
    n = len(range(0, 65, stride))
    assert logits.shape == (2, n, n, 21) and logits.dtype == jnp.float32
    assert set(variables) <= {"params", "batch_stats"}


@pytest.mark.parametrize(
    "name,size,overrides",
    [("deeplab_v1_largefov", 64, {}), ("deeplab_v1_largefov", 63, {}),
     ("deeplab_v2_resnet50_aspp_l", 64, {}), ("deeplab_v2_resnet50_aspp_l", 66, {}),
     ("deeplab_v2_resnet50_aspp_l", 65, {"output_stride": 16}),
     ("deeplab_v2_resnet50_aspp_l", 64, {"output_stride": 16, "pool_ceil_mode": False}),
     ("deeplab_v2_demo", 64, {}), ("deeplab_v2_demo", 70, {"output_stride": 16}),
     ("deeplab_v1_demo", 64, {}), ("deeplab_v1_demo", 63, {})],
)
def test_output_sizes_odd_even_and_output_stride(name, size, overrides):
    model = models.get_model(name, 5, **overrides)
    _, logits = abstract_init(model, (1, size, size + 1, 3))
    os = overrides.get("output_stride", 8)
    ceil = overrides.get("pool_ceil_mode", "demo" not in name)
    assert logits.shape[1:3] == (expected_size(name, size, os, ceil),
                                 expected_size(name, size + 1, os, ceil))
    if not ceil:  # floor pooling: exactly the labels[::os] grid
        assert logits.shape[1:3] == (len(range(0, size, os)), len(range(0, size + 1, os)))


def test_msc_branch_sizes_of_the_caffe_release():
    # One block per stage keeps tracing cheap; sizes depend only on the stem and the strides.
    small = dict(stage_sizes=(1, 1, 1, 1), widths=(4, 4, 4, 4))
    model = models.get_model(
        "deeplab_v2_resnet101_aspp_l", 21, msc_scales=(1.0, 0.75, 0.5), **small
    )
    variables, _ = abstract_init(model, (1, 321, 321, 3))
    fused, branches = jax.eval_shape(
        functools.partial(model.apply, return_branches=True), variables,
        jax.ShapeDtypeStruct((1, 321, 321, 3), jnp.uint8),
    )
    assert fused.shape == (1, 41, 41, 21)
    assert [b.shape[1] for b in branches] == [41, 31, 21]  # inputs 321, 241, 161
    plain_variables, _ = abstract_init(models.get_model("deeplab_v2_resnet101_aspp_l", 21, **small),
                                       (1, 321, 321, 3))
    assert jax.tree.map(lambda s: s.shape, variables) == jax.tree.map(lambda s: s.shape,
                                                                       plain_variables)


def test_msc_fuses_branches_by_max_after_bilinear_resize():
    x = images((2, 41, 35, 3))
    scales = (1.0, 0.75, 0.5)
    plain = models.get_model("deeplab_v2_demo", 4, **TINY)
    msc = models.get_model("deeplab_v2_demo", 4, msc_scales=scales, **TINY)
    variables = random_variables(plain, x)
    fused, branches = jax.jit(functools.partial(msc.apply, return_branches=True))(variables, x)
    assert [b.shape[1:3] for b in branches] == [(6, 5), (4, 4), (3, 3)]  # 41x35, 31x26, 21x18
    # Each branch = the single-scale model on the image resized by the textbook formula.
    apply_plain = jax.jit(plain.apply)
    for scale, branch in zip(scales, branches):
        size = (int(40 * scale) + 1, int(34 * scale) + 1)
        resized = np.stack(
            [bilinear_per_pixel(np.asarray(im, np.float64), *size, True) for im in x]
        )
        want = apply_plain(variables, jnp.asarray(resized, jnp.float32))
        np.testing.assert_allclose(np.asarray(branch), np.asarray(want), rtol=1e-3, atol=1e-3)
    # Fusion = per-pixel max of the branches brought to the scale-1 size (aligned corners).
    aligned = [
        np.stack([bilinear_per_pixel(np.asarray(b[i], np.float64), 6, 5, True) for i in range(2)])
        for b in branches
    ]
    np.testing.assert_allclose(np.asarray(fused), np.max(aligned, axis=0), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(fused), np.asarray(branches[0]))  # the fusion did something


def test_without_msc_return_branches_gives_the_logits():
    model = models.get_model("deeplab_v2_demo", 3, **TINY)
    x = images((1, 33, 33, 3))
    variables = random_variables(model, x)
    logits, branches = jax.jit(functools.partial(model.apply, return_branches=True))(variables, x)
    assert len(branches) == 1 and np.array_equal(branches[0], logits)
    assert logits.shape == (1, 5, 5, 3)


@pytest.mark.parametrize("frozen", [True, False])
def test_bn_frozen_keeps_batch_stats(frozen):
    model = models.get_model("deeplab_v2_demo", 3, bn_frozen=frozen, **TINY)
    x = images((2, 33, 33, 3))
    variables = random_variables(model, x)
    train_step = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    logits, updates = train_step(variables, x, rngs={"dropout": jax.random.key(3)})
    unchanged = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                             variables["batch_stats"], updates["batch_stats"])
    assert all(jax.tree.leaves(unchanged)) == frozen
    eval_logits = jax.jit(model.apply)(variables, x)
    # Frozen BN normalises with the running averages in training too.
    assert np.allclose(np.asarray(logits), np.asarray(eval_logits), atol=1e-5) == frozen


def test_dropout_only_in_training():
    model = models.get_model("deeplab_v2_demo", 3, dropout_rate=0.5, bn_frozen=True, **TINY)
    x = images((1, 33, 33, 3))
    variables = random_variables(model, x)
    apply = jax.jit(model.apply, static_argnames="train")
    # 'rbg' keys: same dropout semantics, but this jaxlib compiles threefry very slowly on CPU.
    outs = [apply(variables, x, train=t, rngs={"dropout": jax.random.key(k, impl="rbg")})
            for t, k in ((False, 1), (False, 2), (True, 1), (True, 2))]
    np.testing.assert_array_equal(np.asarray(outs[0]), np.asarray(outs[1]))
    assert not np.allclose(np.asarray(outs[2]), np.asarray(outs[3]))
    assert not np.allclose(np.asarray(outs[0]), np.asarray(outs[2]))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    x = images((1, 33, 33, 3))
    model32 = models.get_model("deeplab_v2_demo", 3, **TINY)
    model16 = models.get_model("deeplab_v2_demo", 3, dtype=jnp.bfloat16, **TINY)
    variables16, logits16 = abstract_init(model16, x.shape)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables16)} == {jnp.dtype(jnp.float32)}
    assert logits16.dtype == jnp.float32
    variables = random_variables(model32, x)
    out32 = np.asarray(jax.jit(model32.apply)(variables, x))
    out16 = np.asarray(jax.jit(model16.apply)(variables, x))
    assert np.abs(out16 - out32).max() < 0.05 * np.abs(out32).max()
    jaxpr = str(jax.make_jaxpr(model16.apply)(variables, x))
    assert "bf16" in jaxpr  # the convolutions really run in bfloat16


def test_remat_changes_neither_outputs_nor_gradients():
    # Gradients through a rematerialised ResNet stage in training mode (BN statistics updating).
    x = jnp.asarray(np.random.default_rng(4).normal(size=(1, 9, 9, 8)), jnp.float32)
    schedule = ((2, 1, 1),)
    stage = resnet.ResStage("bottleneck", 4, schedule)
    variables = random_variables(stage, x)

    def loss(params, module):
        out, _ = module.apply({**variables, "params": params}, x, True, mutable=["batch_stats"])
        return jnp.sum(out ** 2)

    grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    value, grads = grad_fn(variables["params"], stage)
    value_r, grads_r = grad_fn(variables["params"], stage.clone(remat=True))
    np.testing.assert_allclose(float(value), float(value_r), rtol=1e-5)
    # Recomputation may fuse differently: equal up to float32 rounding of the accumulations.
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-3 * float(jnp.abs(a).max())
        )
    # The whole model: the override reaches the blocks (traced only; the stage test is numeric).
    images_x = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.uint8)
    model = models.get_model("deeplab_v2_demo", 3, **TINY)
    model_vars, _ = abstract_init(model, images_x.shape)
    remat_model = models.get_model("deeplab_v2_demo", 3, remat=True, **TINY)
    assert "remat" in str(jax.make_jaxpr(remat_model.apply)(model_vars, images_x))
    assert "remat" not in str(jax.make_jaxpr(model.apply)(model_vars, images_x))
    # VGG remat keeps the Caffe parameter names.
    vgg = models.get_model("deeplab_v1_largefov", 3, remat=True)
    vgg_vars, _ = abstract_init(vgg, (1, 33, 33, 3))
    assert "conv5_3" in vgg_vars["params"]["backbone"]


def test_input_norm_is_applied_inside_the_model():
    x = images((1, 33, 33, 3))
    model = models.get_model("deeplab_v2_demo", 3, **TINY)  # 'imagenet'
    raw = models.get_model("deeplab_v2_demo", 3, input_norm="none", **TINY)
    variables = random_variables(model, x)
    want = jax.jit(raw.apply)(variables, models.normalize_images(x, "imagenet"))
    np.testing.assert_allclose(np.asarray(jax.jit(model.apply)(variables, x)), np.asarray(want),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="images must be"):
        model.apply(variables, x[..., :2])


def test_batch_norm_statistics_are_global_under_a_sharded_batch(num_devices):
    """jit over a batch sharded on 8 devices gives the same logits and BN updates as one device
    (no axis_name needed: jit's BatchNorm reduces over the global batch)."""
    model = models.get_model("deeplab_v2_demo", 3, bn_frozen=False, **TINY)
    x = images((num_devices, 33, 33, 3))
    variables = random_variables(model, x)
    step = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    logits, updates = step(variables, x)
    mesh = jax.make_mesh((num_devices,), ("data",))
    data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    sharded_x = jax.device_put(x, data_sharding)
    logits_s, updates_s = step(variables, sharded_x)
    assert len(logits_s.sharding.device_set) == num_devices
    np.testing.assert_allclose(np.asarray(logits_s), np.asarray(logits), rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree.leaves(updates_s), jax.tree.leaves(updates)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
