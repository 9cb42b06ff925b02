"""Test-time modes (multi-scale, flip, sliding window), trimap accuracy, and the Evaluator's maths."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import inference, sharding, trimap
from deeplab_jax.config_base import base_config
from deeplab_jax.data.datasets import DatasetDescriptor
from deeplab_jax.evaluate import Evaluator


class RedChannelClassifier(nn.Module):
    """A fixed 'model': one-hot of (red value mod K), at stride 1. Exact, per pixel, no params."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, images, train=False):
        classes = jnp.round(images[..., 0]).astype(jnp.int32) % self.num_classes
        return jax.nn.one_hot(classes, self.num_classes) * 10.0


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


def test_trimap_counts_by_hand():
    label = np.zeros((5, 8), np.uint8)
    label[:, 4:] = 1  # a vertical boundary between columns 3 and 4
    prediction = label.copy()
    prediction[2, 3] = 1  # wrong, next to the boundary
    prediction[2, 0] = 1  # wrong, 3-4 px away
    correct, total = trimap.trimap_counts(prediction, label, widths=(0, 1, 3, 10))
    # Boundary pixels: columns 3 and 4 (distance 0); column 2 and 5 at distance 1; 0 and 7 at 3.
    np.testing.assert_array_equal(total, [10, 20, 40, 40])
    np.testing.assert_array_equal(correct, [9, 19, 38, 38])
    void = label.copy()
    void[:, 4] = 255  # VOC's void band counts as boundary, and is never scored
    correct, total = trimap.trimap_counts(label, void, widths=(0, 1))
    np.testing.assert_array_equal(total, [0, 10])


def test_evaluator_confusion_through_a_fixed_model(num_devices):
    """Padding, filler examples and 255 pixels excluded; counts equal the hand count."""
    k = 3
    descriptor = DatasetDescriptor(
        name="fake", tfds_name="fake", num_classes=k, class_names=("a", "b", "c"),
        splits={"train": 1, "val": 10}, train_split="train", eval_split="val",
        crop_size=(8, 8), eval_size=(8, 10), palette=np.zeros((256, 3), np.uint8))
    config = base_config()
    config.eval.batch_size = 8
    config.eval.trimap_widths = (1, 100)
    rng = np.random.default_rng(3)
    source, expected = [], np.zeros((k, k), np.int64)
    for i in range(10):
        h, w = int(rng.integers(3, 9)), int(rng.integers(3, 11))
        image = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
        label = rng.integers(0, k, (h, w)).astype(np.uint8)
        label[0, 0] = 255
        source.append({"image": image, "label": label, "image_id": str(i)})
        prediction = image[..., 0].astype(np.int64) % k
        keep = label != 255
        np.add.at(expected, (label[keep], prediction[keep]), 1)
    evaluator = Evaluator(RedChannelClassifier(k), sharding.create_mesh(), descriptor, config)
    results = evaluator.evaluate({}, source)
    np.testing.assert_array_equal(results["confusion"], expected)
    assert results["pixel_accuracy"] == pytest.approx(np.trace(expected) / expected.sum())
    # With a band wider than any image, the trimap covers every labelled pixel.
    assert results["trimap_accuracy"][-1] == pytest.approx(results["pixel_accuracy"])
