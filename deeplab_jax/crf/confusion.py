"""Confusion matrices and mean IoU for the CRF parameter search (PASCAL VOC protocol).

Kept local to the CRF package so the search does not depend on the evaluator; `tune` prefers
`deeplab_jax.metrics.confusion_matrix` / `miou` when that module exists.
"""

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels, predictions, num_classes, ignore_label=255, mask=None):
    """[K, K] int32 counts, rows = ground truth, columns = prediction (jittable).

    Pixels whose label is `ignore_label` or outside [0, K), and pixels where `mask` is False, are
    not counted.
    """
    labels = labels.astype(jnp.int32).reshape(-1)
    predictions = predictions.astype(jnp.int32).reshape(-1)
    counted = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    if mask is not None:
        counted = counted & mask.reshape(-1)
    index = jnp.where(counted, labels * num_classes + predictions, 0)
    counts = jnp.bincount(index, weights=counted.astype(jnp.int32), length=num_classes**2)
    return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def miou(confusion_KxK):
    """Mean over classes of TP / (TP + FP + FN); classes absent from labels and predictions are
    left out of the mean (as in the VOC devkit). Host-side numpy, float64."""
    confusion = np.asarray(jax.device_get(confusion_KxK), np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    present = union > 0
    if not present.any():
        return float("nan")
    return float(np.mean(true_positive[present] / union[present]))
