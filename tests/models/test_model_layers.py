"""Layers: atrous conv against an explicit zero-inserted kernel, Caffe pooling, input norm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax.models import layers
from tests.helpers.models import caffe_pool_reference, dilate_kernel, numpy_correlate


@pytest.mark.parametrize(
    "kernel_size,rate", [(1, 1), (3, 1), (3, 2), (3, 5), (4, 4), (4, 8), (7, 4), (2, 2)]
)
def test_atrous_conv_equals_dilated_kernel_conv(kernel_size, rate):
    rng = np.random.default_rng(kernel_size * 10 + rate)
    x = rng.normal(size=(2, 13, 11, 3)).astype(np.float32)
    conv = layers.Conv(4, kernel_size, rate=rate)
    kernel = rng.normal(size=(kernel_size, kernel_size, 3, 4))
    bias = rng.normal(size=4)
    variables = {"params": {"kernel": jnp.asarray(kernel, jnp.float32),
                            "bias": jnp.asarray(bias, jnp.float32)}}
    got = np.asarray(conv.apply(variables, x))
    pad = rate * (kernel_size - 1) // 2
    want = numpy_correlate(x.astype(np.float64), dilate_kernel(kernel, rate), pad) + bias
    assert got.shape == (2, 13, 11, 4)  # stride-1 atrous convs keep the size
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_strided_conv_is_subsampled_dense_conv():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 9, 10, 2)).astype(np.float32)
    conv = layers.Conv(3, 7, stride=2, use_bias=False)
    variables = {"params": {"kernel": jnp.asarray(rng.normal(size=(7, 7, 2, 3)), jnp.float32)}}
    got = np.asarray(conv.apply(variables, x))
    want = numpy_correlate(x, np.asarray(variables["params"]["kernel"]), pad=3, stride=2)
    assert got.shape == (1, 5, 5, 3)  # Caffe: floor((H + 2p - k) / s) + 1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_grouped_conv_equals_per_group_convs():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 6, 6, 4)).astype(np.float32)
    conv = layers.Conv(6, 3, rate=2, groups=2, use_bias=False)
    shapes = jax.eval_shape(conv.init, jax.random.key(2), x)
    assert shapes["params"]["kernel"].shape == (3, 3, 2, 6)  # HWIO with I = in / groups
    kernel = rng.normal(size=(3, 3, 2, 6)).astype(np.float32)
    variables = {"params": {"kernel": jnp.asarray(kernel)}}
    got = np.asarray(conv.apply(variables, x))
    dense = dilate_kernel(kernel, 2)
    want = np.concatenate(
        [numpy_correlate(x[..., :2], dense[..., :3], 2),
         numpy_correlate(x[..., 2:], dense[..., 3:], 2)],
        axis=-1,
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size,rate", [(4, 1), (4, 3), (2, 1)])
def test_non_integer_atrous_padding_is_an_error(kernel_size, rate):
    conv = layers.Conv(2, kernel_size, rate=rate)
    with pytest.raises(ValueError, match="not an integer"):
        jax.eval_shape(conv.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))


def test_conv_bf16_compute_keeps_float32_params():
    conv = layers.Conv(4, 3, rate=2, dtype=jnp.bfloat16)
    x = jnp.ones((1, 5, 5, 3))
    shapes = jax.eval_shape(conv.init, jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
    variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), shapes)
    y = conv.apply(variables, x)
    assert y.dtype == jnp.bfloat16
    assert float(y[0, 2, 2, 0]) == 0.5 * 27 + 0.5  # 3x3x3 taps of 1 * 0.5, plus the bias


@pytest.mark.parametrize("size", [(7, 8)])
@pytest.mark.parametrize("window,stride,pad", [(3, 2, 1), (3, 1, 1), (2, 2, 0), (3, 2, 0)])
@pytest.mark.parametrize("ceil_mode", [True, False])
def test_pooling_matches_caffe_loops(size, window, stride, pad, ceil_mode):
    rng = np.random.default_rng(sum(size) + window + stride)
    # Negative values make "padding never wins" visible for max pooling.
    x = rng.normal(size=size) - 3.0
    x4 = jnp.asarray(x[None, :, :, None], jnp.float32)
    got_max = np.asarray(layers.max_pool(x4, window, stride, pad, ceil_mode))[0, :, :, 0]
    got_avg = np.asarray(layers.avg_pool(x4, window, stride, pad, ceil_mode))[0, :, :, 0]
    want_max = caffe_pool_reference(x, window, stride, pad, ceil_mode, "max")
    want_avg = caffe_pool_reference(x, window, stride, pad, ceil_mode, "ave")
    np.testing.assert_allclose(got_max, want_max, rtol=1e-6)
    np.testing.assert_allclose(got_avg, want_avg, rtol=1e-5, atol=1e-6)


def test_pooled_sizes_of_the_deeplab_pools():
    # 3x3/2 pad 1: 321 -> 161 -> 81 -> 41 (VGG pool1-3 of the release, DeepLab's ResNet pool1).
    assert [layers.pooled_size(n, 3, 2, 1, True) for n in (321, 161, 81)] == [161, 81, 41]
    # Caffe's round-up adds a window on even sizes, PyTorch's default does not.
    assert layers.pooled_size(320, 3, 2, 1, True) == 161
    assert layers.pooled_size(320, 3, 2, 1, False) == 160
    assert layers.pooled_size(41, 3, 1, 1, True) == 41


def test_normalize_images_by_hand():
    rgb = jnp.asarray([[[[10, 20, 30]]]], jnp.uint8)
    caffe = np.asarray(layers.normalize_images(rgb, "caffe_bgr"))
    want_bgr = [30 - 104.008, 20 - 116.669, 10 - 122.675]
    np.testing.assert_allclose(caffe[0, 0, 0], want_bgr, rtol=1e-6)
    mean_plus_std = jnp.asarray([[123.675 + 58.395, 116.28 - 57.12, 103.53]], jnp.float32)
    np.testing.assert_allclose(
        np.asarray(layers.normalize_images(mean_plus_std, "imagenet")), [[1.0, -1.0, 0.0]],
        atol=1e-6,
    )
    none = layers.normalize_images(rgb, "none", jnp.bfloat16)
    assert none.dtype == jnp.bfloat16 and float(none[0, 0, 0, 2]) == 30.0
    with pytest.raises(ValueError, match="input_norm"):
        layers.normalize_images(rgb, "bgr")
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels"):
        layers.normalize_images(jnp.zeros((1, 2, 2, 4)), "none")
