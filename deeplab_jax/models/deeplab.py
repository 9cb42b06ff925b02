"""DeepLab composition: input normalisation, backbone, head, and multi-scale inputs (MSC).

v2 paper §3.2 ("standard multiscale processing") and §4.1.2 ("Multi-scale inputs"): the image is fed
at scales {1, 0.75, 0.5} to parallel DCNN branches that SHARE their parameters; each branch's score
map is bilinearly brought to the scale-1 score map's size and the branches are fused by taking, per
position, the maximum across scales; the loss is applied to every branch and to the fusion, in
training and testing. As in the Caffe release (its `Interp` shrink layers), scale s resizes the
input bilinearly with aligned corners to int((H - 1) s) + 1 pixels (321 -> 241 -> 161), and branch
logits are resized with aligned corners too. The same submodules are called at every scale, so the
parameter tree does not depend on `msc_scales` (weights load either way). `resize_convention=
'pytorch'` resizes as kazuto1011's PyTorch port does instead (branch sizes int(H s), half-pixel
bilinear with align_corners=False for the input and the branch logits), so his MSC weights give his
outputs; a Caffe-trained model keeps 'caffe'. In training with unfrozen
BatchNorm, each scale updates the running statistics in turn (the release freezes BN,
`bn_frozen=True`).

Logits are returned in float32 whatever the compute `dtype`, so losses and the max fusion are exact.

DeepLab-v3+ heads (`uses_low_level_features`) also receive the backbone's stride-4 endpoint
(`backbone.LOW_LEVEL_ENDPOINT`), and their logits are at stride 4. With a PointRend `point_head`
(Kirillov et al. 2019; `pointrend.py`):
- `apply(v, images, train=False)` returns logits at the input resolution (B, H, W, K), refined by
  adaptive subdivision from the coarse logits (MSC branches are each refined, then fused);
- `apply(v, images, train=True, return_points=True, rngs={'points': key, 'dropout': key},
  mutable=['batch_stats'])` returns {'logits': coarse (B, h, w, K), 'point_logits': (B, N, K),
  'points': (B, N, 2) in [0, 1]} for `deeplab_jax.losses.pointrend_loss`;
- `train=True` without `return_points` returns the coarse logits only (the point head unused).
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.models.layers import INPUT_NORMS, normalize_images
from deeplab_jax.models.pointrend import point_sample, sample_training_points, subdivide
from deeplab_jax.models.resize import RESIZE_CONVENTIONS, resize_bilinear, scaled_size


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


@dataclasses.dataclass(frozen=True)
class CommonSpec:
    """Settings every DeepLab model has; hashable. Defaults: the v1/v2 release (Caffe).

    output_stride: input pixels per backbone feature (8 in v1/v2, v2 paper §3.1; v3 trains at 16).
    msc_scales: multi-scale inputs (§3.2), () for none; normalised by `check_msc_scales`.
    input_norm: a `normalize_images` mode. pool_ceil_mode: Caffe's ceil rule for pooled sizes
    (VGG pools, ResNet stem; Xception has no pooling). remat: True / 'full' or a
    jax.checkpoint_policies name, per backbone block. dtype: compute dtype (parameters and logits
    stay float32). resize_convention: how MSC resizes, 'caffe' (the release) or 'pytorch'
    (kazuto1011's port).
    """

    output_stride: int = 8
    msc_scales: tuple = ()
    input_norm: str = "caffe_bgr"
    pool_ceil_mode: bool = True
    remat: bool | str = False
    dtype: Any = jnp.float32
    resize_convention: str = "caffe"

    def __post_init__(self):
        object.__setattr__(self, "msc_scales", check_msc_scales(self.msc_scales))
        if self.resize_convention not in RESIZE_CONVENTIONS:
            raise ValueError(f"resize_convention={self.resize_convention!r}; use one of "
                             f"{RESIZE_CONVENTIONS}")


class DeepLab(nn.Module):
    """images (B, H, W, 3) RGB 0..255 -> logits (B, h, w, K) at the model's logit stride.

    `backbone(x, train)` returns features (and `(features, endpoints)` with
    `return_endpoints=True`); `head(features, train)` returns class scores, or
    `head(features, low_level, train)` when the head `uses_low_level_features` (v3+). Their
    parameters live under 'backbone', 'head' and 'point_head'.
    """

    backbone: nn.Module
    head: nn.Module
    msc_scales: Sequence[float] = ()
    input_norm: str = "caffe_bgr"
    dtype: Any = jnp.float32
    point_head: nn.Module | None = None
    resize_convention: str = "caffe"

    def _needs_low_level(self):
        return bool(getattr(self.head, "uses_low_level_features", False)) or (
            self.point_head is not None)

    def _forward(self, x_BxHxWx3, train):
        """(logits float32, stride-4 features or None)."""
        x = x_BxHxWx3.astype(self.dtype)
        if not self._needs_low_level():
            return self.head(self.backbone(x, train=train), train=train).astype(jnp.float32), None
        endpoint = getattr(self.backbone, "LOW_LEVEL_ENDPOINT", None)
        if endpoint is None:
            raise ValueError(
                f"{type(self.backbone).__name__} has no stride-4 endpoint; the v3+ decoder and "
                "PointRend need a ResNet or Xception backbone"
            )
        features, endpoints = self.backbone(x, train=train, return_endpoints=True)
        low_level = endpoints[endpoint]
        if getattr(self.head, "uses_low_level_features", False):
            logits = self.head(features, low_level, train=train)
        else:
            logits = self.head(features, train=train)
        return logits.astype(jnp.float32), low_level

    def _logits(self, x_BxHxWx3, train):
        logits, low_level = self._forward(x_BxHxWx3, train)
        if self.point_head is None or train:
            return logits
        return subdivide(logits, low_level, self.point_head, x_BxHxWx3.shape[1:3],
                         self.point_head.subdivision_points)

    def _point_outputs(self, x_BxHxWx3, train):
        if self.point_head is None:
            raise ValueError("return_points=True needs a model built with pointrend=True")
        logits, low_level = self._forward(x_BxHxWx3, train)
        head = self.point_head
        points_BxNx2 = sample_training_points(
            logits, self.make_rng("points"), head.train_points, head.oversample_ratio,
            head.importance_ratio)
        point_logits = head(point_sample(low_level, points_BxNx2),
                            point_sample(logits, points_BxNx2))
        return {"logits": logits, "point_logits": point_logits, "points": points_BxNx2}

    def __call__(self, images_BxHxWx3, train=False, return_branches=False, return_points=False):
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
        if return_points:
            if scales or return_branches:
                raise ValueError(
                    "return_points=True (PointRend training outputs) works without msc_scales "
                    "and return_branches"
                )
            return self._point_outputs(x_BxHxWx3, train)
        if not scales:
            logits_BxhxwxK = self._logits(x_BxHxWx3, train)
            return (logits_BxhxwxK, [logits_BxhxwxK]) if return_branches else logits_BxhxwxK

        _, height, width, _ = x_BxHxWx3.shape
        convention = self.resize_convention
        align_corners = convention == "caffe"
        branches = []
        for scale in scales:
            if scale == 1.0:
                x_scaled = x_BxHxWx3
            else:
                size = (scaled_size(height, scale, convention),
                        scaled_size(width, scale, convention))
                x_scaled = resize_bilinear(x_BxHxWx3, size, align_corners=align_corners)
            branches.append(self._logits(x_scaled, train))
        target_size = branches[scales.index(1.0)].shape[1:3]
        fused_BxhxwxK = None
        for branch in branches:
            aligned = (branch if branch.shape[1:3] == target_size
                       else resize_bilinear(branch, target_size, align_corners=align_corners))
            fused_BxhxwxK = (
                aligned if fused_BxhxwxK is None else jnp.maximum(fused_BxhxwxK, aligned)
            )
        return (fused_BxhxwxK, branches) if return_branches else fused_BxhxwxK
