"""Per-pixel softmax cross-entropy with an ignore label, and how labels meet the logits.

Paper 002 §4 trains against the ground truth *subsampled* to the score map (output stride 8) rather
than upsampling the score map; both are offered (`label_mode`). With the aligned sizes DeepLab uses
(H = k * os + 1, e.g. 321 -> 41), logit i sits on pixel i * os, so subsampling is labels[::os]; for
other sizes, and for the smaller multi-scale (MSC) branches, labels are resized by nearest neighbour
with the same corner alignment the model's resizing uses. MSC (§4.1.2): the loss is applied to every
scale branch and to their max-fusion, and the losses are summed (each Caffe loss layer has weight 1).
"""

import jax
import jax.numpy as jnp

from deeplab_jax.models.resize import resize_labels_nearest, upsample_logits


def softmax_cross_entropy(logits_BxhxwxK, labels_Bxhxw, ignore_label=255, class_weights=None):
    """Mean cross-entropy over valid pixels (labels in [0, K)); 0 if no pixel is valid."""
    num_classes = logits_BxhxwxK.shape[-1]
    labels = labels_Bxhxw.astype(jnp.int32)
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    safe_labels = jnp.where(valid, labels, 0)
    log_probs = jax.nn.log_softmax(logits_BxhxwxK.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    weights = valid.astype(jnp.float32)
    if class_weights is not None:
        weights = weights * jnp.asarray(class_weights, jnp.float32)[safe_labels]
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


def segmentation_loss(logits_BxhxwxK, labels_BxHxW, *, label_mode="subsample", output_stride=None,
                      ignore_label=255, class_weights=None):
    """Cross-entropy of one score map against full-resolution labels."""
    if label_mode == "subsample":
        labels = labels_for_logits(labels_BxHxW, logits_BxhxwxK.shape[1:3], output_stride)
        logits = logits_BxhxwxK
    elif label_mode == "upsample":
        labels = labels_BxHxW
        stride = output_stride or infer_output_stride(labels_BxHxW.shape[1],
                                                      logits_BxhxwxK.shape[1])
        logits = upsample_logits(logits_BxhxwxK, labels_BxHxW.shape[1:3], output_stride=stride)
    else:
        raise ValueError(f"config.loss.label_mode={label_mode!r}; use 'subsample' or 'upsample'")
    return softmax_cross_entropy(logits, labels, ignore_label, class_weights)


def msc_loss(fused_logits, branch_logits, labels_BxHxW, **kwargs):
    """Sum of the losses of the fused map and of every branch (one branch = plain loss)."""
    if len(branch_logits) == 1:
        return segmentation_loss(fused_logits, labels_BxHxW, **kwargs)
    total = segmentation_loss(fused_logits, labels_BxHxW, **kwargs)
    for branch in branch_logits:
        # Branch maps are smaller than the scale-1 map: labels follow by aligned nearest resize.
        total = total + segmentation_loss(branch, labels_BxHxW, **{**kwargs, "output_stride": None})
    return total
