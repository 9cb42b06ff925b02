"""Confusion matrix and IoU against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax.evaluation import metrics


def _hand_case():
    # 3 classes; 255 = ignore; the last column is padding (mask False).
    labels = np.array([[0, 0, 1, 2],
                       [1, 1, 255, 2],
                       [2, 2, 0, 1]])
    predictions = np.array([[0, 1, 1, 2],
                            [1, 2, 0, 0],
                            [2, 2, 0, 2]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0]], bool)
    # Valid pixels (row, col): labels -> predictions
    # (0,0) 0->0, (0,1) 0->1, (0,2) 1->1, (1,0) 1->1, (1,1) 1->2, (1,2) ignored,
    # (2,0) 2->2, (2,1) 2->2, (2,2) 0->0.
    expected = np.array([[2, 1, 0],
                         [0, 2, 1],
                         [0, 0, 2]])
    return labels, predictions, mask, expected


def test_confusion_matrix_matches_hand_count():
    labels, predictions, mask, expected = _hand_case()
    got = jax.jit(metrics.confusion_matrix, static_argnums=2)(
        jnp.asarray(labels), jnp.asarray(predictions), 3, jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(got), expected)
    np.testing.assert_array_equal(
        metrics.confusion_matrix_numpy(labels, predictions, 3, mask), expected)


def test_iou_from_confusion_by_hand():
    _, _, _, confusion = _hand_case()
    result = metrics.iou_from_confusion(confusion, ("a", "b", "c"))
    # IoU_k = TP / (GT + PRED - TP): a: 2/(3+2-2)=2/3, b: 2/(3+3-2)=1/2, c: 2/(2+3-2)=2/3
    np.testing.assert_allclose(result["per_class_iou"], [2 / 3, 1 / 2, 2 / 3])
    assert result["miou"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert result["pixel_accuracy"] == pytest.approx(6 / 8)
    assert result["mean_accuracy"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert result["per_class"]["b"] == pytest.approx(0.5)


def test_absent_class_is_excluded_from_the_mean():
    confusion = np.array([[5, 0, 0], [0, 0, 0], [1, 0, 4]])
    result = metrics.iou_from_confusion(confusion)
    assert np.isnan(result["per_class_iou"][1])
    assert result["miou"] == pytest.approx((5 / 6 + 4 / 5) / 2)


def test_labels_outside_range_are_not_counted():
    labels = np.array([0, 7, 255, 1])
    predictions = np.array([0, 0, 0, 1])
    got = metrics.confusion_matrix_numpy(labels, predictions, 2)
    np.testing.assert_array_equal(got, [[1, 0], [0, 1]])
