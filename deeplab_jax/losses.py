"""Training losses: per-pixel softmax cross-entropy with an ignore label, MSC and PointRend.

The DeepLab-v2 paper (§4) trains against the ground truth *subsampled* to the score map (output
stride 8) rather than upsampling the score map; both are offered (`label_mode`). With the aligned
sizes DeepLab uses (H = k * os + 1, e.g. 321 -> 41), logit i sits on pixel i * os, so subsampling
is labels[::os]; for other sizes, and for the smaller multi-scale (MSC) branches, labels are
resized by nearest neighbour with the same corner alignment the model's resizing uses. MSC
(§4.1.2): the loss is applied to every scale branch and to their max-fusion, and the losses are
summed (each Caffe loss layer has weight 1).

PointRend (Kirillov et al. 2019, §3.3/§4): the coarse segmentation loss plus the cross-entropy of
the point head's predictions at the sampled points against the labels read at those points
(nearest pixel: interpolating class ids would invent classes), summed with weight 1 as detectron2
does.

Every loss is a mean over valid positions weighted by `pixel_weights`, the one definition of "valid"
(label in [0, K), not the data set's ignore label) and of the class weighting; gradient
accumulation (`train/accumulation.py`) weights micro-batches by the same `loss_denominator`.
"""

import dataclasses
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from deeplab_jax.data.datasets import IGNORE_LABEL
from deeplab_jax.models.pointrend import sample_labels_nearest
from deeplab_jax.models.resize import resize_labels_nearest, upsample_logits

LABEL_MODES = ("subsample", "upsample")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """How labels meet the logits; built from config.loss and the data set's ignore label."""

    label_mode: str = "subsample"
    ignore_label: int = IGNORE_LABEL
    class_weights: Optional[Tuple[float, ...]] = None
    point_weight: float = 1.0  # PointRend: weight of the point loss

    def __post_init__(self):
        if self.label_mode not in LABEL_MODES:
            raise ValueError(
                f"config.loss.label_mode={self.label_mode!r}; use one of {LABEL_MODES}")

    @classmethod
    def from_config(cls, config_loss, ignore_label: int) -> "LossConfig":
        weights = tuple(float(w) for w in config_loss.class_weights) or None
        return cls(label_mode=config_loss.label_mode, ignore_label=int(ignore_label),
                   class_weights=weights)


def pixel_weights(labels, num_classes, ignore_label=IGNORE_LABEL, class_weights=None):
    """(weights float32, safe int32 labels): 0 where the label is ignored or out of [0, K)."""
    labels = labels.astype(jnp.int32)
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    safe_labels = jnp.where(valid, labels, 0)
    weights = valid.astype(jnp.float32)
    if class_weights is not None:
        weights = weights * jnp.asarray(class_weights, jnp.float32)[safe_labels]
    return weights, safe_labels


def softmax_cross_entropy(logits_BxhxwxK, labels_Bxhxw, ignore_label=IGNORE_LABEL,
                          class_weights=None):
    """Mean cross-entropy over valid pixels (labels in [0, K)); 0 if no pixel is valid."""
    weights, safe_labels = pixel_weights(labels_Bxhxw, logits_BxhxwxK.shape[-1], ignore_label,
                                         class_weights)
    log_probs = jax.nn.log_softmax(logits_BxhxwxK.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1e-6)


def infer_output_stride(input_size, logits_size):
    """The stride s with logit i on pixel i * s (len(range(0, H, s)) == h), or None if none fits."""
    height, h = int(input_size), int(logits_size)
    if h <= 1 or h > height:
        return None
    stride = (height - 1) // (h - 1)
    return stride if stride >= 1 and len(range(0, height, stride)) == h else None


def labels_for_logits(labels_BxHxW, logits_hw, output_stride=None):
    """Labels at the logits' positions: labels[::os] when aligned, else aligned nearest resize."""
    height, width = labels_BxHxW.shape[1:3]
    h, w = logits_hw
    if (h, w) == (height, width):
        return labels_BxHxW
    stride_h = output_stride or infer_output_stride(height, h)
    stride_w = output_stride or infer_output_stride(width, w)
    if stride_h and stride_h == stride_w and len(range(0, height, stride_h)) == h and \
            len(range(0, width, stride_w)) == w:
        return labels_BxHxW[:, ::stride_h, ::stride_w]
    return resize_labels_nearest(labels_BxHxW, (h, w))


def loss_targets(labels_BxHxW, logits_hw, label_mode):
    """The labels a score map of size `logits_hw` is compared with under `label_mode`."""
    if label_mode == "subsample":
        return labels_for_logits(labels_BxHxW, logits_hw)
    return labels_BxHxW


def loss_denominator(labels_BxHxW, logits_hw, num_classes, loss_config: LossConfig):
    """Sum of the pixel weights `segmentation_loss` divides by for a score map of `logits_hw`."""
    targets = loss_targets(labels_BxHxW, logits_hw, loss_config.label_mode)
    weights, _ = pixel_weights(targets, num_classes, loss_config.ignore_label,
                               loss_config.class_weights)
    return jnp.sum(weights)


def segmentation_loss(logits_BxhxwxK, labels_BxHxW, loss_config: LossConfig = LossConfig(), *,
                      output_stride=None):
    """Cross-entropy of one score map against full-resolution labels."""
    if loss_config.label_mode == "subsample":
        labels = labels_for_logits(labels_BxHxW, logits_BxhxwxK.shape[1:3], output_stride)
        logits = logits_BxhxwxK
    else:
        labels = labels_BxHxW
        stride = output_stride or infer_output_stride(labels_BxHxW.shape[1],
                                                      logits_BxhxwxK.shape[1])
        logits = upsample_logits(logits_BxhxwxK, labels_BxHxW.shape[1:3], output_stride=stride)
    return softmax_cross_entropy(logits, labels, loss_config.ignore_label,
                                 loss_config.class_weights)


def msc_loss(fused_logits, branch_logits, labels_BxHxW, loss_config: LossConfig = LossConfig()):
    """Sum of the losses of the fused map and of every branch (one branch = plain loss)."""
    total = segmentation_loss(fused_logits, labels_BxHxW, loss_config)
    if len(branch_logits) == 1:
        return total
    for branch in branch_logits:
        # Branch maps are smaller than the scale-1 map: labels follow by aligned nearest resize.
        total = total + segmentation_loss(branch, labels_BxHxW, loss_config)
    return total


def point_loss(point_logits_BxNxK, points_BxNx2, labels_BxHxW,
               loss_config: LossConfig = LossConfig(), *, align_corners=True):
    """Mean cross-entropy over the valid points (0 if none is valid).

    Labels at a point are those of the nearest pixel, with `point_sample`'s coordinate convention
    (align_corners=True: point u is pixel u (H - 1)).
    """
    if point_logits_BxNxK.shape[:2] != points_BxNx2.shape[:2]:
        raise ValueError(
            f"point_logits {point_logits_BxNxK.shape} and points {points_BxNx2.shape} disagree on "
            "(batch, number of points)")
    point_labels_BxN = sample_labels_nearest(labels_BxHxW, points_BxNx2, align_corners)
    return softmax_cross_entropy(point_logits_BxNxK, point_labels_BxN, loss_config.ignore_label,
                                 loss_config.class_weights)


def pointrend_loss(outputs, labels_BxHxW, loss_config: LossConfig = LossConfig()):
    """Coarse segmentation loss + point_weight * point loss, from `return_points=True` outputs.

    outputs = {"logits": (B, h, w, K) coarse, "point_logits": (B, N, K), "points": (B, N, 2)},
    as a model built with `pointrend=True` returns them when applied with return_points=True and
    a 'points' rng.
    """
    missing = {"logits", "point_logits", "points"} - set(outputs)
    if missing:
        raise ValueError(
            f"outputs lack {sorted(missing)}: call the model with return_points=True (and a "
            "'points' rng) to get PointRend training outputs")
    coarse = segmentation_loss(outputs["logits"], labels_BxHxW, loss_config)
    points = point_loss(outputs["point_logits"], outputs["points"], labels_BxHxW, loss_config)
    return coarse + jnp.float32(loss_config.point_weight) * points
