"""layers.conv2d: the matrix-product path of 1x1 convolutions (lowered for XLA:CPU) equals the
convolution, in value and in both gradients, strided or not; other kernels, and programs lowered
for a GPU, keep the convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax.models import layers


def lax_conv(x, kernel, stride, padding=((0, 0), (0, 0))):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


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
