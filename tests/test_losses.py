"""Cross-entropy with the ignore label, label subsampling, MSC loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import losses
from deeplab_jax.models.resize import upsample_logits


def test_cross_entropy_ignores_255_and_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=(2, 3, 4))
    labels[0, 0, :] = 255
    labels[1, 2, 1] = 255
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = labels != 255
    expected = -np.mean(np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None],
                                           -1)[..., 0][valid])
    got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # Changing logits only at ignored pixels changes nothing, including gradients there.
    perturbed = logits.copy()
    perturbed[0, 0, :] += 100.0
    assert float(losses.softmax_cross_entropy(jnp.asarray(perturbed), jnp.asarray(labels))) == \
        pytest.approx(expected, rel=1e-5)
    grads = jax.grad(losses.softmax_cross_entropy)(jnp.asarray(logits), jnp.asarray(labels))
    assert np.all(np.asarray(grads)[0, 0] == 0)


def test_all_ignored_gives_zero_not_nan():
    logits = jnp.zeros((1, 2, 2, 3))
    labels = jnp.full((1, 2, 2), 255)
    assert float(losses.softmax_cross_entropy(logits, labels)) == 0.0


def test_class_weights_weight_the_mean():
    logits = jnp.asarray(np.log(np.array([[[[0.5, 0.5]], [[0.9, 0.1]]]], np.float32)))
    labels = jnp.asarray([[[0], [1]]])  # shape (1, 2, 1)
    got = losses.softmax_cross_entropy(logits, labels, class_weights=(1.0, 3.0))
    expected = (1 * -np.log(0.5) + 3 * -np.log(0.1)) / 4
    assert float(got) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("height,h,stride", [(321, 41, 8), (129, 17, 8), (128, 16, 8),
                                              (513, 33, 16), (65, 65, 1), (241, 31, 8)])
def test_infer_output_stride(height, h, stride):
    assert losses.infer_output_stride(height, h) == stride


def test_labels_subsampled_at_logit_positions():
    labels = jnp.arange(2 * 17 * 17).reshape(2, 17, 17) % 200
    sub = losses.labels_for_logits(labels, (3, 3))  # 17 = 2 * 8 + 1 -> stride 8
    np.testing.assert_array_equal(np.asarray(sub), np.asarray(labels)[:, ::8, ::8])


def test_msc_loss_sums_fused_and_branches():
    rng = np.random.default_rng(1)
    labels = jnp.asarray(rng.integers(0, 4, (1, 17, 17)))
    fused = jnp.asarray(rng.normal(size=(1, 3, 3, 4)), jnp.float32)
    small = jnp.asarray(rng.normal(size=(1, 2, 2, 4)), jnp.float32)
    total = losses.msc_loss(fused, [fused, small], labels)
    expected = (2 * losses.segmentation_loss(fused, labels)
                + losses.softmax_cross_entropy(small, labels[:, ::16, ::16]))
    assert float(total) == pytest.approx(float(expected), rel=1e-6)
    assert float(losses.msc_loss(fused, [fused], labels)) == pytest.approx(
        float(losses.segmentation_loss(fused, labels)), rel=1e-6)


def test_upsample_mode_compares_at_full_resolution():
    rng = np.random.default_rng(2)
    labels = jnp.asarray(rng.integers(0, 3, (1, 9, 9)))
    logits = jnp.asarray(rng.normal(size=(1, 3, 3, 3)), jnp.float32)
    up = losses.segmentation_loss(logits, labels, losses.LossConfig(label_mode="upsample"))
    expected = losses.softmax_cross_entropy(upsample_logits(logits, (9, 9), output_stride=4),
                                            labels)
    assert float(up) == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ValueError, match="label_mode"):
        losses.LossConfig(label_mode="bogus")


def test_the_data_sets_ignore_label_reaches_the_loss():
    """A data set whose ignore label is not 255: its pixels weigh nothing, 255 is out of range."""
    rng = np.random.default_rng(3)
    labels = np.asarray(rng.integers(0, 3, (1, 5, 5)))
    labels[0, :2] = 7  # the data set's ignore label
    logits = jnp.asarray(rng.normal(size=(1, 5, 5, 3)), jnp.float32)
    config = losses.LossConfig(ignore_label=7)
    got = losses.segmentation_loss(logits, jnp.asarray(labels), config)
    keep = labels[0] != 7
    log_probs = np.asarray(jax.nn.log_softmax(logits[0]))
    nll = -log_probs[keep, labels[0][keep]]
    assert float(got) == pytest.approx(float(nll.mean()), rel=1e-6)
