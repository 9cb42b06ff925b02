"""DeepLab composition: input normalisation, backbone, head, and multi-scale inputs (MSC).

v2 paper §3.2 ("standard multiscale processing") and §4.1.2 ("Multi-scale inputs"): the image is fed
at scales {1, 0.75, 0.5} to parallel DCNN branches that SHARE their parameters; each branch's score
map is bilinearly brought to the scale-1 score map's size and the branches are fused by taking, per
position, the maximum across scales; the loss is applied to every branch and to the fusion, in
training and testing. As in the Caffe release (its `Interp` shrink layers), scale s resizes the
input bilinearly with aligned corners to int((H - 1) s) + 1 pixels (321 -> 241 -> 161), and branch
logits are resized with aligned corners too. The same submodules are called at every scale, so the
parameter tree does not depend on `msc_scales` (weights load either way). In training with unfrozen
BatchNorm, each scale updates the running statistics in turn (the release freezes BN,
`bn_frozen=True`).

Logits are returned in float32 whatever the compute `dtype`, so losses and the max fusion are exact.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.models.layers import INPUT_NORMS, normalize_images
from deeplab_jax.models.resize import resize_bilinear, scaled_size


def check_msc_scales(msc_scales):
    """() or a tuple of positive scales that contains 1.0 (the size the branches are fused at)."""
    scales = tuple(float(s) for s in msc_scales)
    if scales and (1.0 not in scales or any(s <= 0 for s in scales)):
        raise ValueError(
            f"msc_scales={tuple(msc_scales)!r} must be () (no multi-scale input) or positive "
            "scales including 1.0, e.g. (1.0, 0.75, 0.5) as in the paper"
        )
    if len(set(scales)) != len(scales):
        raise ValueError(f"msc_scales={tuple(msc_scales)!r} repeats a scale")
    return scales


class DeepLab(nn.Module):
    """images (B, H, W, 3) RGB 0..255 -> logits (B, h, w, K) at the backbone's output stride.

    `backbone(x, train)` returns features; `head(features, train)` returns class scores. Their
    parameters live under 'backbone' and 'head'.
    """

    backbone: nn.Module
    head: nn.Module
    msc_scales: Sequence[float] = ()
    input_norm: str = "caffe_bgr"
    dtype: Any = jnp.float32

    def _logits(self, x_BxHxWx3, train):
        features = self.backbone(x_BxHxWx3.astype(self.dtype), train=train)
        return self.head(features, train=train).astype(jnp.float32)

    def __call__(self, images_BxHxWx3, train=False, return_branches=False):
        if images_BxHxWx3.ndim != 4 or images_BxHxWx3.shape[-1] != 3:
            raise ValueError(
                f"images must be (B, H, W, 3) RGB in 0..255, got shape {images_BxHxWx3.shape}"
            )
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm={self.input_norm!r} is unknown; use one of {INPUT_NORMS}")
        scales = check_msc_scales(self.msc_scales)
        # Normalise in float32 first: bilinear resizing commutes with the per-channel affine map,
        # and the Caffe release also shrinks the mean-subtracted data.
        x_BxHxWx3 = normalize_images(images_BxHxWx3, self.input_norm, jnp.float32)
        if not scales:
            logits_BxhxwxK = self._logits(x_BxHxWx3, train)
            return (logits_BxhxwxK, [logits_BxhxwxK]) if return_branches else logits_BxhxwxK

        _, height, width, _ = x_BxHxWx3.shape
        branches = []
        for scale in scales:
            if scale == 1.0:
                x_scaled = x_BxHxWx3
            else:
                size = (scaled_size(height, scale), scaled_size(width, scale))
                x_scaled = resize_bilinear(x_BxHxWx3, size, align_corners=True)
            branches.append(self._logits(x_scaled, train))
        target_size = branches[scales.index(1.0)].shape[1:3]
        fused_BxhxwxK = None
        for branch in branches:
            aligned = resize_bilinear(branch, target_size, align_corners=True)
            fused_BxhxwxK = (
                aligned if fused_BxhxwxK is None else jnp.maximum(fused_BxhxwxK, aligned)
            )
        return (fused_BxhxwxK, branches) if return_branches else fused_BxhxwxK
