"""`dense_crf`: input validation, return types, the host path from jitted code, parameters."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax.crf import (CRFParams, DEEPLAB_V1, DEEPLAB_V1_RANGE, DEEPLAB_V2,
                             PAPER_COARSE_GRID, PROBS_SUM_TOLERANCE, dense_crf)

from . import cluster_probs, photo


@pytest.fixture(scope="module")
def inputs():
    image = photo("coffee", 12, 16)
    probs, _ = cluster_probs(image, 3)
    return image, probs


@pytest.mark.parametrize("method", ["meanfield", "permutohedral"])
def test_bad_inputs_raise_clear_errors(inputs, method):
    image, probs = inputs
    cases = [
        (image.astype(np.float32), probs, TypeError, "image must be uint8"),
        (image, probs[:, :-1], ValueError, "leading dimensions"),
        (image, probs[None], ValueError, "same rank"),
        (image[..., :2], probs, ValueError, r"\[H, W, 3\]"),
        (image[0], probs[0], ValueError, r"\[H, W, 3\]"),
        (image, probs[..., :1] / probs[..., :1], ValueError, "K >= 2"),
        (image, probs * 1.5, ValueError, "sum to 1"),
        (image, np.log(probs), ValueError, "non-negative"),
        (image, np.where(probs > 0.5, np.nan, probs), ValueError, "NaN"),
        (image, (probs * 100).astype(np.int32), TypeError, "floating-point"),
    ]
    for bad_image, bad_probs, error, message in cases:
        with pytest.raises(error, match=message):
            dense_crf(bad_image, bad_probs, method=method)


def test_sum_tolerance_is_as_documented(inputs):
    image, probs = inputs
    near = probs * (1 + 0.5 * PROBS_SUM_TOLERANCE)
    dense_crf(image, near, CRFParams(iterations=1), method="permutohedral")  # accepted
    with pytest.raises(ValueError, match="sum to 1"):
        dense_crf(image, probs * (1 + 3 * PROBS_SUM_TOLERANCE), method="permutohedral")


def test_bad_params_and_method(inputs):
    image, probs = inputs
    with pytest.raises(ValueError, match="bi_rgb_std"):
        dense_crf(image, probs, CRFParams(bi_rgb_std=0.0))
    with pytest.raises(ValueError, match="iterations"):
        dense_crf(image, probs, CRFParams(iterations=2.5))
    with pytest.raises(TypeError, match="CRFParams"):
        dense_crf(image, probs, {"bi_w": 4})
    with pytest.raises(ValueError, match="method"):
        dense_crf(image, probs, method="bilateral_grid")


def test_return_types_and_shapes(inputs):
    image, probs = inputs
    host = dense_crf(image, probs, method="permutohedral")
    assert isinstance(host, np.ndarray) and host.dtype == np.float32 and host.shape == probs.shape
    device = dense_crf(jnp.asarray(image), jnp.asarray(probs))
    assert isinstance(device, jax.Array) and device.dtype == jnp.float32
    np.testing.assert_allclose(host.sum(-1), 1.0, atol=1e-5)
    batched = dense_crf(image[None].repeat(2, 0), probs[None].repeat(2, 0), method="permutohedral")
    assert batched.shape == (2,) + probs.shape


def test_permutohedral_from_jitted_and_vmapped_code(inputs):
    image, probs = inputs
    expected = dense_crf(image, probs, method="permutohedral")

    @jax.jit
    def refine(image, probs, bi_w):
        q = dense_crf(image, probs, DEEPLAB_V2.replace(bi_w=bi_w), method="permutohedral")
        return jnp.argmax(q, axis=-1), q

    labels, q = refine(image, probs, 4.0)
    np.testing.assert_allclose(np.asarray(q), expected, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(labels), expected.argmax(-1))
    stacked = jax.vmap(lambda i, p: dense_crf(i, p, method="permutohedral"))(
        np.stack([image, image[::-1]]), np.stack([probs, probs[::-1]]))
    np.testing.assert_allclose(np.asarray(stacked[0]), expected, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(stacked[1]), dense_crf(image[::-1], probs[::-1], method="permutohedral"),
        atol=1e-6)


def test_host_path_does_not_import_jax():
    code = ("import sys, numpy as np; from deeplab_jax.crf import dense_crf; "
            "img = np.zeros((8, 9, 3), np.uint8); p = np.full((8, 9, 2), 0.5, np.float32); "
            "dense_crf(img, p, method='permutohedral'); assert 'jax' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_presets_are_the_papers_values():
    assert (DEEPLAB_V2.bi_w, DEEPLAB_V2.bi_xy_std, DEEPLAB_V2.bi_rgb_std, DEEPLAB_V2.pos_w,
            DEEPLAB_V2.pos_xy_std, DEEPLAB_V2.iterations) == (4, 67, 3, 3, 1, 10)
    assert CRFParams() == DEEPLAB_V2
    assert (DEEPLAB_V1.bi_w, DEEPLAB_V1.pos_w, DEEPLAB_V1.pos_xy_std) == (4, 3, 3)
    low, high = DEEPLAB_V1_RANGE["bi_xy_std"]
    assert low <= DEEPLAB_V1.bi_xy_std <= high
    assert PAPER_COARSE_GRID["bi_xy_std"] == (30, 40, 50, 60, 70, 80, 90, 100)
    assert PAPER_COARSE_GRID["bi_w"] == (3, 4, 5, 6)
    assert PAPER_COARSE_GRID["bi_rgb_std"] == (3, 4, 5, 6)
