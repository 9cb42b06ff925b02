"""Segmentation metrics: confusion matrices on the device, IoU figures on the host.

The jitted part returns one K x K confusion matrix per batch (rows = ground truth, columns =
prediction); they are summed in int64 on the host (and across processes, since the per-batch matrix
is computed from globally sharded arrays), and mean IoU is computed once at the end as in the
PASCAL VOC devkit: IoU_k = TP / (TP + FP + FN), averaged over classes present in the ground truth
or the predictions. Pixels with the ignore label (255, VOC's boundary band) or outside the mask
(padding) never count.
"""

import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels, predictions, num_classes, mask=None, ignore_label=255):
    """int32 [K, K] counts over valid pixels; labels/predictions integer arrays of equal shape."""
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ")
    labels = labels.astype(jnp.int32)
    predictions = predictions.astype(jnp.int32)
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    if mask is not None:
        valid &= mask.astype(bool)
    # Invalid pixels are sent to index 0 with weight 0, so shapes stay static under jit.
    index = jnp.where(valid, labels * num_classes + predictions, 0)
    counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[index.ravel()].add(
        valid.ravel().astype(jnp.int32))
    return counts.reshape(num_classes, num_classes)


def confusion_matrix_numpy(labels, predictions, num_classes, mask=None, ignore_label=255):
    """Host version of `confusion_matrix` (int64), for per-image work of varying sizes."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    predictions = np.asarray(predictions).astype(np.int64).ravel()
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    if mask is not None:
        valid &= np.asarray(mask, bool).ravel()
    counts = np.bincount(labels[valid] * num_classes + predictions[valid],
                         minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(confusion_KxK, class_names=None):
    """mIoU, per-class IoU, pixel accuracy and mean class accuracy from summed counts (host)."""
    confusion = np.asarray(confusion_KxK, np.float64)
    true_positive = np.diag(confusion)
    ground_truth = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    union = ground_truth + predicted - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
        class_accuracy = np.where(ground_truth > 0, true_positive / ground_truth, np.nan)
    total = confusion.sum()
    result = {
        "miou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
        "pixel_accuracy": float(true_positive.sum() / total) if total else float("nan"),
        "mean_accuracy": (float(np.nanmean(class_accuracy)) if np.any(ground_truth > 0)
                          else float("nan")),
        "per_class_iou": iou,
    }
    if class_names is not None:
        result["per_class"] = {name: float(v) for name, v in zip(class_names, iou)}
    return result
