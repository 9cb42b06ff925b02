"""PointRend for semantic segmentation (Kirillov, Wu, He, Girshick, "PointRend: Image Segmentation
as Rendering", CVPR 2020, arXiv:1912.08193), on top of DeepLab-v3/v3+ (§4 and §5 "semantic
segmentation": DeepLabV3 coarse predictions + fine-grained res2 features).

Three parts (§3):
- **Point representation** (§3.2): at a real-valued point, the fine-grained features (here the
  backbone's stride-4 endpoint) and the coarse prediction (the K class logits of the DeepLab head)
  are read by bilinear interpolation (`point_sample`) and concatenated.
- **Point head** (§3.3): an MLP shared by all points (1x1 convs: 3 hidden layers of 256 channels,
  the coarse prediction concatenated again to every hidden layer's output) predicting K logits.
- **Point selection** (§3.1): in training, N points are chosen on the coarse map by biased random
  sampling (`sample_training_points`): k N uniform candidates (oversampling k = 3), the
  beta N most uncertain of them (importance ratio beta = 0.75; uncertainty = minus the gap between
  the two largest logits) plus (1 - beta) N uniform points. In inference, adaptive subdivision
  (`subdivide`): the prediction is upsampled x2 bilinearly, the N most uncertain grid points are
  re-predicted by the point head, and this repeats up to the input resolution. N is fixed per step
  (min(N, grid size)), so every shape is static and the whole procedure jits.

Coordinates: points are (B, N, 2) in [0, 1], [..., 0] = row (y), [..., 1] = column (x). With
`align_corners=True` (the default, the convention of this project's resizing and of the DeepLab
release) a point u lands on index u * (n - 1) of an axis of length n, so the same point addresses
the same image position on every map whose size is aligned to the input (n = (N_in - 1) / s + 1,
e.g. 129 -> 33 at stride 4 and 9 at stride 16). `align_corners=False` gives detectron2's
half-pixel convention (u * n - 0.5). Samples beyond the border are clamped (border padding).
Training defaults (2048 points, 8192 per subdivision step) follow detectron2's PointRend semantic
segmentation configs.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deeplab_jax.models.resize import resize_bilinear

# detectron2 PointRend semantic segmentation: POINT_HEAD.TRAIN_NUM_POINTS / SUBDIVISION_NUM_POINTS.
TRAIN_POINTS = 2048
SUBDIVISION_POINTS = 8192
OVERSAMPLE_RATIO = 3.0
IMPORTANCE_RATIO = 0.75


@dataclasses.dataclass(frozen=True)
class PointRendSpec:
    """PointRend on a v3/v3+ model: `enabled` adds a `PointHead`; its point-selection settings
    (§3.1): `points` per training image, `subdivision_points` per inference step, and the
    oversampling and importance ratios of the training points."""

    enabled: bool = True
    points: int = TRAIN_POINTS
    subdivision_points: int = SUBDIVISION_POINTS
    oversample_ratio: float = OVERSAMPLE_RATIO
    importance_ratio: float = IMPORTANCE_RATIO


def _source_coords(u_BxN, size, align_corners):
    """Continuous index along an axis of length `size`, clamped to [0, size - 1]."""
    coords = u_BxN * (size - 1) if align_corners else u_BxN * size - 0.5
    return jnp.clip(coords, 0.0, size - 1)


def point_sample(x_BxhxwxC, points_BxNx2, align_corners=True):
    """Bilinear interpolation of x at real-valued points in [0, 1]^2 -> (B, N, C) (module doc)."""
    if x_BxhxwxC.ndim != 4:
        raise ValueError(f"point_sample expects BxhxwxC maps, got shape {x_BxhxwxC.shape}")
    if points_BxNx2.ndim != 3 or points_BxNx2.shape[-1] != 2:
        raise ValueError(f"points must be (B, N, 2) (row, col) in [0, 1], got {points_BxNx2.shape}")
    batch, height, width, channels = x_BxhxwxC.shape
    if points_BxNx2.shape[0] != batch:
        raise ValueError(f"{points_BxNx2.shape[0]} point sets for a batch of {batch} maps")
    points = points_BxNx2.astype(jnp.float32)
    rows = _source_coords(points[..., 0], height, align_corners)
    cols = _source_coords(points[..., 1], width, align_corners)
    row0 = jnp.floor(rows)
    col0 = jnp.floor(cols)
    frac_r = (rows - row0)[..., None]
    frac_c = (cols - col0)[..., None]
    row0, col0 = row0.astype(jnp.int32), col0.astype(jnp.int32)
    row1 = jnp.minimum(row0 + 1, height - 1)
    col1 = jnp.minimum(col0 + 1, width - 1)
    flat_BxHWxC = x_BxhxwxC.reshape(batch, height * width, channels)

    def gather(r, c):
        return jnp.take_along_axis(flat_BxHWxC, (r * width + c)[..., None], axis=1)

    top = gather(row0, col0) * (1 - frac_r) + gather(row1, col0) * frac_r
    bottom = gather(row0, col1) * (1 - frac_r) + gather(row1, col1) * frac_r
    return (top * (1 - frac_c) + bottom * frac_c).astype(x_BxhxwxC.dtype)


def sample_labels_nearest(labels_BxHxW, points_BxNx2, align_corners=True):
    """Label of the nearest pixel to each point (halves round up) -> (B, N), the labels' dtype."""
    if labels_BxHxW.ndim != 3:
        raise ValueError(f"labels must be BxHxW, got shape {labels_BxHxW.shape}")
    batch, height, width = labels_BxHxW.shape
    points = points_BxNx2.astype(jnp.float32)
    rows = jnp.floor(_source_coords(points[..., 0], height, align_corners) + 0.5).astype(jnp.int32)
    cols = jnp.floor(_source_coords(points[..., 1], width, align_corners) + 0.5).astype(jnp.int32)
    flat = labels_BxHxW.reshape(batch, height * width)
    return jnp.take_along_axis(flat, jnp.minimum(rows, height - 1) * width
                               + jnp.minimum(cols, width - 1), axis=1)


def uncertainty(logits_xK):
    """-(top1 - top2) of the logits (§3.1 / detectron2 semantic segmentation): highest near 0."""
    if logits_xK.shape[-1] < 2:
        raise ValueError("uncertainty needs at least 2 classes")
    top2 = jax.lax.top_k(logits_xK.astype(jnp.float32), 2)[0]
    return top2[..., 1] - top2[..., 0]


def sample_training_points(coarse_logits_BxhxwxK, rng, num_points=TRAIN_POINTS,
                           oversample_ratio=OVERSAMPLE_RATIO, importance_ratio=IMPORTANCE_RATIO,
                           align_corners=True):
    """Biased random point selection of §3.1 (training) -> points (B, num_points, 2) in [0, 1].

    The coarse map only ranks candidates; no gradient flows through the selection.
    """
    if num_points < 1 or oversample_ratio < 1 or not 0 <= importance_ratio <= 1:
        raise ValueError(
            f"need num_points >= 1, oversample_ratio >= 1, 0 <= importance_ratio <= 1; got "
            f"{num_points}, {oversample_ratio}, {importance_ratio}"
        )
    batch = coarse_logits_BxhxwxK.shape[0]
    num_candidates = int(oversample_ratio * num_points)
    num_uncertain = int(importance_ratio * num_points)
    candidates_rng, random_rng = jax.random.split(rng)
    candidates_BxMx2 = jax.random.uniform(candidates_rng, (batch, num_candidates, 2))
    uncertain_BxUx2 = select_uncertain_points(
        coarse_logits_BxhxwxK, candidates_BxMx2, num_uncertain, align_corners)
    random_BxRx2 = jax.random.uniform(random_rng, (batch, num_points - num_uncertain, 2))
    return jnp.concatenate([uncertain_BxUx2, random_BxRx2], axis=1)


def select_uncertain_points(coarse_logits_BxhxwxK, candidates_BxMx2, count, align_corners=True):
    """The `count` candidates where the (bilinearly sampled) coarse prediction is most uncertain,
    most uncertain first -> (B, count, 2). No gradient flows through the selection."""
    scores_BxM = uncertainty(point_sample(
        jax.lax.stop_gradient(coarse_logits_BxhxwxK), candidates_BxMx2, align_corners))
    _, chosen_BxU = jax.lax.top_k(scores_BxM, count)
    return jnp.take_along_axis(candidates_BxMx2, chosen_BxU[..., None], axis=1)


def subdivision_sizes(coarse_hw, image_hw):
    """Grid sizes of the subdivision steps: each x2 in the aligned sense ((n - 1) * 2 + 1), the
    last one exactly the image size (e.g. 33 -> 65 -> 129; 9 -> 17 -> 33 -> 65 -> 129)."""
    (h, w), (height, width) = coarse_hw, image_hw
    if h > height or w > width:
        raise ValueError(f"coarse map {coarse_hw} is larger than the image {image_hw}")
    sizes = []
    while (h, w) != (height, width):
        h = min(max(2 * (h - 1) + 1, h + 1), height)
        w = min(max(2 * (w - 1) + 1, w + 1), width)
        sizes.append((h, w))
    return sizes


def grid_points(indices_BxN, grid_hw, align_corners=True):
    """Points in [0, 1]^2 of flat indices into an (h, w) grid (inverse of `point_sample`'s map)."""
    h, w = grid_hw
    rows = (indices_BxN // w).astype(jnp.float32)
    cols = (indices_BxN % w).astype(jnp.float32)
    if align_corners:
        rows = rows / max(h - 1, 1)
        cols = cols / max(w - 1, 1)
    else:
        rows = (rows + 0.5) / h
        cols = (cols + 0.5) / w
    return jnp.stack([rows, cols], axis=-1)


def subdivide(coarse_logits_BxhxwxK, fine_BxhfxwfxC, point_head, image_hw,
              num_points=SUBDIVISION_POINTS):
    """Adaptive subdivision inference (§3.1) -> logits (B, H, W, K) at `image_hw`, float32.

    point_head(fine_BxNxC, coarse_BxNxK) -> (B, N, K). At every step the current prediction is
    upsampled, its `min(num_points, h * w)` most uncertain grid points are re-predicted from the
    fine features and the *original* coarse logits at those points, and written back.
    """
    logits = coarse_logits_BxhxwxK.astype(jnp.float32)
    batch, _, _, num_classes = logits.shape
    batch_index_Bx1 = jnp.arange(batch)[:, None]
    for size in subdivision_sizes(logits.shape[1:3], tuple(image_hw)):
        logits = resize_bilinear(logits, size, align_corners=True)
        count = min(int(num_points), size[0] * size[1])
        flat_BxPxK = logits.reshape(batch, size[0] * size[1], num_classes)
        _, chosen_BxN = jax.lax.top_k(uncertainty(flat_BxPxK), count)
        points_BxNx2 = grid_points(chosen_BxN, size)
        refined_BxNxK = point_head(
            point_sample(fine_BxhfxwfxC, points_BxNx2),
            point_sample(coarse_logits_BxhxwxK, points_BxNx2),
        ).astype(jnp.float32)
        flat_BxPxK = flat_BxPxK.at[batch_index_Bx1, chosen_BxN].set(refined_BxNxK)
        logits = flat_BxPxK.reshape(batch, *size, num_classes)
    return logits


class PointHead(nn.Module):
    """The point head MLP (§3.3) and the point-selection settings `DeepLab` uses with it.

    Parameters: fc{1..num_layers}/{kernel, bias} (He init), predictor/{kernel, bias}
    (N(0, 0.001), zero bias, as detectron2's point head predictor).
    """

    num_classes: int
    hidden_features: int = 256
    num_layers: int = 3
    coarse_each_layer: bool = True
    train_points: int = TRAIN_POINTS
    oversample_ratio: float = OVERSAMPLE_RATIO
    importance_ratio: float = IMPORTANCE_RATIO
    subdivision_points: int = SUBDIVISION_POINTS
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, fine_BxNxC, coarse_BxNxK):
        if coarse_BxNxK.shape[-1] != self.num_classes:
            raise ValueError(
                f"coarse predictions have {coarse_BxNxK.shape[-1]} classes, the point head "
                f"{self.num_classes}")
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        coarse = coarse_BxNxK.astype(fine_BxNxC.dtype)
        x = jnp.concatenate([fine_BxNxC, coarse], axis=-1)
        for index in range(self.num_layers):
            x = nn.relu(nn.Dense(
                self.hidden_features, kernel_init=nn.initializers.he_normal(),
                name=f"fc{index + 1}", **dense)(x))
            if self.coarse_each_layer:
                x = jnp.concatenate([x, coarse.astype(x.dtype)], axis=-1)
        return nn.Dense(
            self.num_classes, kernel_init=nn.initializers.normal(0.001), name="predictor", **dense
        )(x).astype(jnp.float32)
