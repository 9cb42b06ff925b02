"""Resizing: bilinear against a per-pixel formula, logit/pixel alignment, nearest labels, MSC."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from deeplab_jax.models import resize
from tests.helpers.models import bilinear_per_pixel


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize(
    "in_hw,out_hw", [((5, 7), (9, 13)), ((9, 13), (5, 7)), ((1, 4), (3, 2)), ((6, 6), (1, 1)),
                     ((11, 9), (81, 33))]
)
def test_resize_bilinear_matches_per_pixel_formula(in_hw, out_hw, align_corners):
    rng = np.random.default_rng(sum(in_hw) + sum(out_hw))
    x = rng.normal(size=(2,) + in_hw + (3,))
    got = np.asarray(resize.resize_bilinear(jnp.asarray(x, jnp.float32), out_hw, align_corners))
    for b in range(2):
        want = bilinear_per_pixel(x[b], *out_hw, align_corners)
        np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-5)


def test_resize_bilinear_hand_values():
    x = jnp.asarray([0.0, 10.0]).reshape(1, 1, 2, 1)
    got = resize.resize_bilinear(x, (1, 3))
    np.testing.assert_allclose(np.asarray(got).ravel(), [0.0, 5.0, 10.0])
    # Half-pixel centres: output pixel 0 of 4 sits at source -0.25, clamped to 0; pixel 1 at 0.25.
    got = resize.resize_bilinear(x, (1, 4), align_corners=False)
    np.testing.assert_allclose(np.asarray(got).ravel(), [0.0, 2.5, 7.5, 10.0])
    # uint8 images come back as float32.
    assert resize.resize_bilinear(jnp.zeros((1, 3, 3, 3), jnp.uint8), (2, 2)).dtype == jnp.float32


def test_upsample_logits_puts_logit_i_on_pixel_i_times_stride():
    # A ramp in logit coordinates must become exactly pixel / 8 at the input resolution.
    ramp_41 = jnp.arange(41, dtype=jnp.float32)
    logits = jnp.broadcast_to(ramp_41.reshape(1, 41, 1, 1), (1, 41, 41, 2))
    up = np.asarray(resize.upsample_logits(logits, (321, 321)))
    np.testing.assert_allclose(up[0, :, 5, 1], np.arange(321) / 8.0, atol=1e-4)
    # 320 px -> 40 logits: align_corners would stretch (39 / 319 per pixel); the stride keeps 1/8.
    ramp_40 = jnp.arange(40, dtype=jnp.float32).reshape(1, 40, 1, 1)
    ramp_40 = jnp.broadcast_to(ramp_40, (1, 40, 3, 1))
    up = np.asarray(resize.upsample_logits(ramp_40, (320, 17), output_stride=8))
    np.testing.assert_allclose(up[0, :, 0, 0], np.minimum(np.arange(320) / 8.0, 39.0), atol=1e-4)
    up_corners = np.asarray(resize.upsample_logits(ramp_40, (320, 17)))
    assert abs(up_corners[0, 160, 0, 0] - 20.0) > 0.05  # the alignment the stride argument fixes
    with pytest.raises(ValueError, match="output_stride"):
        resize.upsample_logits(ramp_40, (320, 17), output_stride=0)


def test_resize_is_differentiable():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 5, 2)), jnp.float32)
    check_grads(lambda v: resize.resize_bilinear(v, (7, 3)), (x,), order=1, modes=["rev"],
                atol=1e-2, rtol=1e-2)


def test_nearest_indices_by_hand():
    np.testing.assert_array_equal(resize.nearest_indices(5, 3), [0, 2, 4])
    np.testing.assert_array_equal(resize.nearest_indices(4, 3), [0, 2, 3])  # 1.5 rounds up
    np.testing.assert_array_equal(resize.nearest_indices(321, 41), np.arange(41) * 8)
    np.testing.assert_array_equal(resize.nearest_indices(7, 1), [0])


def test_resize_labels_nearest_matches_round_formula():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 21, size=(2, 9, 13)).astype(np.int32)
    got = np.asarray(resize.resize_labels_nearest(jnp.asarray(labels), (4, 6)))
    for i in range(4):
        for j in range(6):
            r = math.floor(i * 8 / 3 + 0.5)
            c = math.floor(j * 12 / 5 + 0.5)
            np.testing.assert_array_equal(got[:, i, j], labels[:, r, c])
    assert got.dtype == np.int32
    # 321 -> 41 picks exactly labels[::8], the labels at the logits of output stride 8.
    big = jnp.asarray(rng.integers(0, 21, size=(1, 321, 321)), jnp.int32)
    np.testing.assert_array_equal(resize.resize_labels_nearest(big, (41, 41)), big[:, ::8, ::8])


def test_scaled_size_follows_caffe():
    assert [resize.scaled_size(321, s) for s in (1.0, 0.75, 0.5)] == [321, 241, 161]
    assert [resize.scaled_size(513, s) for s in (0.75, 0.5)] == [385, 257]
    with pytest.raises(ValueError, match="scale"):
        resize.scaled_size(321, 0.0)


def test_bad_sizes_are_errors():
    with pytest.raises(ValueError, match="size"):
        resize.resize_bilinear(jnp.zeros((1, 3, 3, 1)), (0, 3))
    with pytest.raises(ValueError, match="BxHxWxC"):
        resize.resize_bilinear(jnp.zeros((3, 3, 1)), (2, 2))
    with pytest.raises(ValueError, match="BxHxW labels"):
        resize.resize_labels_nearest(jnp.zeros((1, 3, 3, 1)), (2, 2))


def test_resize_runs_under_jit():
    f = jax.jit(lambda v: resize.resize_bilinear(v, (5, 5)))
    assert f(jnp.ones((1, 3, 3, 2))).shape == (1, 5, 5, 2)
