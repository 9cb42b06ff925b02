"""Heads: v2 ASPP sums its atrous classifiers; v1 fc6-fc7-fc8 shapes, pool5a, init, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax.models import layers
from deeplab_jax.models.heads import aspp, largefov
from tests.helpers.models import (
    abstract_params,
    count_params,
    dilate_kernel,
    numpy_correlate,
    random_variables,
)


def test_aspp_output_is_the_sum_of_its_branches():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 8, 6)), jnp.float32)
    head = aspp.ASPPV2(num_classes=5, rates=(1, 2, 3, 6))
    variables = random_variables(head, x)
    got = np.asarray(head.apply(variables, x))
    want = np.zeros((2, 9, 8, 5))
    for index, rate in enumerate((1, 2, 3, 6)):
        branch = variables["params"][f"c{index}"]
        # Each branch computed alone, by NumPy: a 3x3 classifier with bias at its rate.
        kernel = dilate_kernel(np.asarray(branch["kernel"], np.float64), rate)
        want += numpy_correlate(np.asarray(x, np.float64), kernel, rate)
        want += np.asarray(branch["bias"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rates", [aspp.ASPP_L_RATES, aspp.ASPP_S_RATES, aspp.LARGEFOV_RATES])
def test_aspp_parameter_count(rates):
    num_classes = 21
    params = abstract_params(aspp.ASPPV2(num_classes, rates), (1, 9, 9, 2048))["params"]
    assert sorted(params) == [f"c{i}" for i in range(len(rates))]
    assert count_params(params) == len(rates) * (9 * 2048 * num_classes + num_classes)


def test_aspp_rejects_bad_rates():
    with pytest.raises(ValueError, match="aspp_rates"):
        abstract_params(aspp.ASPPV2(3, rates=()), (1, 9, 9, 4))
    with pytest.raises(ValueError, match="aspp_rates"):
        abstract_params(aspp.ASPPV2(3, rates=(6, 0)), (1, 9, 9, 4))


def test_classifier_init_is_normal_001_with_zero_bias():
    head = aspp.ASPPV2(num_classes=21, rates=(6,))
    # Real initialisation ('rbg' key: this jaxlib compiles threefry very slowly on CPU).
    variables = jax.jit(head.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, 5, 5, 256)))
    kernel = np.asarray(variables["params"]["c0"]["kernel"])
    assert abs(kernel.std() - 0.01) < 0.0005 and abs(kernel.mean()) < 0.0005
    assert not np.any(np.asarray(variables["params"]["c0"]["bias"]))


@pytest.mark.parametrize(
    "kernel,rate,width,fc6_shape",
    [(3, 12, 1024, (3, 3, 512, 1024)), (7, 4, 4096, (7, 7, 512, 4096)),
     (4, 4, 4096, (4, 4, 512, 4096)), (4, 8, 4096, (4, 4, 512, 4096))],
)
def test_fc_head_shapes_of_table_1(kernel, rate, width, fc6_shape):
    head = largefov.FCHead(21, kernel, rate, width)
    params = abstract_params(head, (1, 41, 41, 512))["params"]
    assert params["fc6"]["kernel"].shape == fc6_shape
    assert params["fc7"]["kernel"].shape == (1, 1, width, width)
    assert params["fc8"]["kernel"].shape == (1, 1, width, 21)
    features = jax.ShapeDtypeStruct((1, 41, 41, 512), jnp.float32)
    out = jax.eval_shape(head.apply, {"params": params}, features)
    assert out.shape == (1, 41, 41, 21)


def tiny_fc_head(**kwargs):
    return largefov.FCHead(3, fc6_kernel=3, fc6_rate=2, width=8, **kwargs)


def test_pool5a_is_a_3x3_average_before_fc6():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 6, 7, 4)), jnp.float32)
    variables = random_variables(tiny_fc_head(), x)
    with_pool = tiny_fc_head(pool5a=True).apply(variables, x)
    pooled = layers.avg_pool(x, 3, 1, 1)
    # Caffe AVE with padding 1, stride 1: the zero padding counts, i.e. always a sum / 9.
    padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
    box = sum(padded[:, i:i + 6, j:j + 7] for i in range(3) for j in range(3)) / 9.0
    np.testing.assert_allclose(np.asarray(pooled), box, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(with_pool), np.asarray(tiny_fc_head(pool5a=False).apply(variables, pooled)),
        rtol=1e-5, atol=1e-5,
    )


def test_fc_head_dropout_only_in_training():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 5, 5, 4)), jnp.float32)
    head = tiny_fc_head()
    variables = random_variables(head, x)
    apply = jax.jit(head.apply, static_argnames="train")
    # 'rbg' keys: same dropout semantics, but this jaxlib compiles threefry very slowly on CPU.
    key1, key2 = jax.random.key(1, impl="rbg"), jax.random.key(2, impl="rbg")
    eval_a = apply(variables, x, train=False, rngs={"dropout": key1})
    eval_b = apply(variables, x, train=False, rngs={"dropout": key2})
    np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
    train_a = apply(variables, x, train=True, rngs={"dropout": key1})
    train_b = apply(variables, x, train=True, rngs={"dropout": key2})
    assert not np.allclose(np.asarray(train_a), np.asarray(train_b))
    assert not np.allclose(np.asarray(train_a), np.asarray(eval_a))


def test_vgg_aspp_head_sums_fc_branches():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 7, 7, 4)), jnp.float32)
    head = largefov.VGGASPPHead(3, rates=(1, 2), width=8)
    variables = random_variables(head, x)
    got = head.apply(variables, x)
    want = sum(
        largefov.FCHead(3, 3, rate, 8, pool5a=False).apply(
            {"params": variables["params"][f"c{i}"]}, x)
        for i, rate in enumerate((1, 2))
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rates,size", [((6, 12, 18, 24), 9), ((2, 4, 8, 12), 13), ((12,), 5),
                                        ((1, 2, 3, 4), 17)])
def test_aspp_v2_taps_formulation_equals_atrous_convolutions(rates, size):
    """The 'taps' matmul formulation equals one conv per branch: same params, same outputs, grads."""
    from deeplab_jax.models.heads.aspp import ASPPV2

    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, size, size + 2, 16)), jnp.float32)
    taps, conv = ASPPV2(5, rates, implementation="taps"), ASPPV2(5, rates, implementation="conv")
    variables = conv.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, taps.init(jax.random.key(0), x)) == \
        jax.tree.map(jnp.shape, variables)
    variables = jax.tree.map(lambda v: v + 0.1, variables)  # non-zero biases
    np.testing.assert_allclose(np.asarray(taps.apply(variables, x)),
                               np.asarray(conv.apply(variables, x)), rtol=1e-5, atol=1e-5)

    def loss(model, v):
        return jnp.sum(model.apply(v, x) ** 2)

    grads_taps = jax.grad(lambda v: loss(taps, v))(variables)
    grads_conv = jax.grad(lambda v: loss(conv, v))(variables)
    for a, b in zip(jax.tree.leaves(grads_taps), jax.tree.leaves(grads_conv)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
