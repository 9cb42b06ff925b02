"""layers.conv2d: the matrix-product path of 1x1 convolutions and the shifted-copies path of
depthwise convolutions (both lowered for XLA:CPU) equal the convolution, in value and in both
gradients, strided, atrous and asymmetrically padded or not; other kernels, and programs lowered
for a GPU, keep the convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax.models import layers


def lax_conv(x, kernel, stride, padding=((0, 0), (0, 0)), rate=1, groups=1):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                        rhs_dilation=(rate, rate),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups,
                                        precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [9, 10])
def test_pointwise_matmul_equals_the_convolution_and_its_gradients(stride, size):
    rng = np.random.default_rng(stride)
    x = jnp.asarray(rng.normal(size=(2, size, size + 1, 6)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(1, 1, 6, 5)), jnp.float32)
    ours = layers.conv2d(x, kernel, stride)
    expected = lax_conv(x, kernel, stride)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    cotangent = jnp.asarray(rng.normal(size=expected.shape), jnp.float32)
    grads = jax.vjp(lambda a, b: layers.conv2d(a, b, stride), x, kernel)[1](cotangent)
    expected_grads = jax.vjp(lambda a, b: lax_conv(a, b, stride), x, kernel)[1](cotangent)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_padded_or_wider_kernels_stay_convolutions():
    x = jnp.ones((1, 5, 5, 2))
    padded = layers.conv2d(x, jnp.ones((1, 1, 2, 3)), 1, padding=((1, 1), (1, 1)))
    assert padded.shape == (1, 7, 7, 3) and float(padded[0, 0, 0, 0]) == 0.0
    text = jax.jit(lambda a: layers.conv2d(a, jnp.ones((3, 3, 2, 3)), 1, 2, ((2, 2), (2, 2)))
                   ).lower(x).as_text()
    assert "convolution" in text
    pointwise = jax.jit(lambda a: layers.conv2d(a, jnp.ones((1, 1, 2, 3)), 2)).trace(x)
    on_cpu = pointwise.lower(lowering_platforms=("cpu",)).as_text()
    assert "convolution" not in on_cpu and "dot_general" in on_cpu
    on_gpu = pointwise.lower(lowering_platforms=("cuda",)).as_text()
    assert "convolution" in on_gpu and "dot_general" not in on_gpu


@pytest.mark.parametrize("stride, rate, padding", [
    (1, 1, ((1, 1), (1, 1))),  # Xception's middle flow
    (2, 1, ((1, 1), (1, 1))),  # its strided entry-flow units
    (1, 3, ((3, 3), (3, 3))),  # atrous (exit flow, separable ASPP)
    (2, 2, ((0, 3), (2, 1))),  # asymmetric, as TF's "SAME" for even sizes
])
def test_depthwise_taps_equal_the_grouped_convolution_and_its_gradients(stride, rate, padding):
    rng = np.random.default_rng(rate)
    x = jnp.asarray(rng.normal(size=(2, 11, 12, 5)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 5)), jnp.float32)

    def ours(a, b):
        return layers.conv2d(a, b, stride, rate, padding, groups=5)

    def expected_fn(a, b):
        return lax_conv(a, b, stride, padding, rate, groups=5)

    expected = expected_fn(x, kernel)
    got = ours(x, kernel)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    cotangent = jnp.asarray(rng.normal(size=expected.shape), jnp.float32)
    grads = jax.vjp(ours, x, kernel)[1](cotangent)
    expected_grads = jax.vjp(expected_fn, x, kernel)[1](cotangent)
    for got_grad, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got_grad, want, rtol=1e-4, atol=1e-4)
    # bfloat16 in and out, float32 products and sum: within bfloat16's rounding of the result.
    half = ours(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
    exact = expected_fn(x.astype(jnp.bfloat16).astype(jnp.float32),
                        kernel.astype(jnp.bfloat16).astype(jnp.float32))
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(half.astype(jnp.float32), exact, rtol=1e-2, atol=1e-2)


def test_depthwise_lowering_is_shifted_copies_on_cpu_and_a_convolution_elsewhere(monkeypatch):
    x = jnp.ones((1, 9, 9, 4))

    def depthwise():
        return jax.jit(lambda a: layers.conv2d(a, jnp.ones((3, 3, 1, 4)), 1, 2, ((2, 2), (2, 2)),
                                               groups=4)).trace(x)

    assert "convolution" not in depthwise().lower(lowering_platforms=("cpu",)).as_text()
    assert "convolution" in depthwise().lower(lowering_platforms=("cuda",)).as_text()
    # The platforms are a setting read at tracing (benchmarks/depthwise.py compares both forms).
    monkeypatch.setattr(layers, "DEPTHWISE_TAPS_PLATFORMS", ("cuda",))
    assert "convolution" in depthwise().lower(lowering_platforms=("cpu",)).as_text()
    assert "convolution" not in depthwise().lower(lowering_platforms=("cuda",)).as_text()
    # Grouped but not depthwise (two channels per group): the convolution on every platform.
    grouped = jax.jit(lambda a: layers.conv2d(a, jnp.ones((3, 3, 2, 2)), 1, 1, ((1, 1), (1, 1)),
                                              groups=2)).trace(x)
    assert "convolution" in grouped.lower(lowering_platforms=("cpu",)).as_text()
