"""Test-time modes: multi-scale, flip, sliding window."""

import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import inference
from tests.helpers.fixed_models import RedChannelClassifier


def test_window_starts_cover_the_image():
    assert inference.window_starts(10, 4, 3) == [0, 3, 6]
    assert inference.window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert inference.window_starts(3, 4, 3) == [0]
    with pytest.raises(ValueError, match="window"):
        inference.window_starts(10, 0, 3)


@pytest.mark.parametrize("shape", [(2, 20, 27), (1, 5, 6)])
def test_sliding_window_equals_whole_image_for_a_per_pixel_model(shape):
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 255, (*shape, 3)), jnp.float32)

    def predict(x):
        return jnp.stack([x[..., 0] * 2.0, x[..., 1] - x[..., 2]], axis=-1)

    tiled = inference.sliding_window_logits(predict, images, window=(8, 9), stride=(5, 4))
    np.testing.assert_allclose(np.asarray(tiled), np.asarray(predict(images)), rtol=1e-6)


def test_multiscale_and_flip_fusions():
    model = RedChannelClassifier()
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.integers(0, 255, (1, 9, 9, 3)), jnp.uint8)
    plain = inference.logits_at_input_size(model, {}, images)
    # A per-pixel model is flip-equivariant: flip + flip back averages to the same map.
    flipped = inference.multiscale_logits(model, {}, images, scales=(1.0,), flip=True)
    np.testing.assert_allclose(np.asarray(flipped), np.asarray(plain), atol=1e-6)
    both_mean = inference.multiscale_logits(model, {}, images, scales=(1.0, 0.5), fusion="mean")
    both_max = inference.multiscale_logits(model, {}, images, scales=(1.0, 0.5), fusion="max")
    assert np.all(np.asarray(both_max) >= np.asarray(plain) - 1e-6)
    small = (2 * np.asarray(both_mean) - np.asarray(plain))  # = the 0.5 branch, upsampled
    np.testing.assert_allclose(np.maximum(small, np.asarray(plain)), np.asarray(both_max),
                               atol=1e-5)
    with pytest.raises(ValueError, match="fusion"):
        inference.multiscale_logits(model, {}, images, fusion="median")
