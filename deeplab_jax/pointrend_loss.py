"""PointRend training loss (Kirillov et al. 2019, §3.3/§4): cross-entropy of the point head's
predictions at the sampled points against the labels read at those points.

A model built with `pointrend=True` returns what this needs when called as

    outputs, updates = model.apply(
        variables, images_BxHxWx3, train=True, return_points=True,
        rngs={"points": points_rng, "dropout": dropout_rng}, mutable=["batch_stats"])
    # outputs = {"logits": (B, h, w, K) coarse, "point_logits": (B, N, K), "points": (B, N, 2)}
    loss = pointrend_loss(outputs, labels_BxHxW)

`pointrend_loss` = the usual segmentation loss of the coarse logits (`losses.segmentation_loss`,
same `label_mode`) + `point_weight` x the point loss, as detectron2 sums its coarse and point
losses with weight 1. Labels at a point are those of the nearest pixel (labels are class ids:
interpolating them would invent classes), with the coordinate convention of `point_sample`
(`align_corners=True`: point u is pixel u (H - 1)); pixels labelled `ignore_label` (255) do not
count. Fold the step into `points_rng` (`jax.random.fold_in(rng, step)`) as for dropout.
"""

import jax.numpy as jnp

from deeplab_jax import losses
from deeplab_jax.models.pointrend import sample_labels_nearest


def point_loss(point_logits_BxNxK, points_BxNx2, labels_BxHxW, *, ignore_label=255,
               class_weights=None, align_corners=True):
    """Mean cross-entropy over the valid points (0 if none is valid)."""
    if point_logits_BxNxK.shape[:2] != points_BxNx2.shape[:2]:
        raise ValueError(
            f"point_logits {point_logits_BxNxK.shape} and points {points_BxNx2.shape} disagree on "
            "(batch, number of points)"
        )
    point_labels_BxN = sample_labels_nearest(labels_BxHxW, points_BxNx2, align_corners)
    return losses.softmax_cross_entropy(point_logits_BxNxK, point_labels_BxN, ignore_label,
                                        class_weights)


def pointrend_loss(outputs, labels_BxHxW, *, point_weight=1.0, label_mode="subsample",
                   ignore_label=255, class_weights=None):
    """Coarse segmentation loss + point_weight * point loss, from `return_points=True` outputs."""
    missing = {"logits", "point_logits", "points"} - set(outputs)
    if missing:
        raise ValueError(
            f"outputs lack {sorted(missing)}: call the model with return_points=True (and a "
            "'points' rng) to get PointRend training outputs"
        )
    coarse = losses.segmentation_loss(
        outputs["logits"], labels_BxHxW, label_mode=label_mode, ignore_label=ignore_label,
        class_weights=class_weights)
    points = point_loss(outputs["point_logits"], outputs["points"], labels_BxHxW,
                        ignore_label=ignore_label, class_weights=class_weights)
    return coarse + jnp.float32(point_weight) * points
