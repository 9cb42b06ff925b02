"""Exact, differentiable resizing for DeepLab: bilinear (separable matrices) and nearest labels.

DeepLab recovers full-resolution score maps by bilinear interpolation of the output-stride logits
(v2 paper §3.1: "fast bilinear interpolation by an additional factor of 8"), and its multi-scale
input (MSC, §3.2 / §4.1.2) shrinks the image and brings each branch's logits back to the scale-1
size. The Caffe release does both with its `Interp` layer, i.e. bilinear with align_corners=True:
output pixel i samples source coordinate i (in - 1) / (out - 1), so corners map to corners. With the
DeepLab size rule (321 -> 41 at output stride 8), logit i sits on input pixel i * 8, which is
exactly what align_corners gives when H = (h - 1) * os + 1; `upsample_logits(..., output_stride=os)`
keeps that alignment for any size.

Resizing is two small matrix products (einsum over H then W) with interpolation matrices built on
the host: exact (no gather), differentiable, and fast on every backend; HIGHEST precision keeps TPUs
from rounding the products to bfloat16.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _matrix_from_coords(src_coords, in_size):
    """(out, in) matrix of linear-interpolation weights for source coordinates in [0, in - 1]."""
    src = np.clip(np.asarray(src_coords, np.float64), 0.0, in_size - 1)
    low = np.floor(src).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    frac = src - low
    matrix = np.zeros((src.shape[0], in_size), np.float64)
    rows = np.arange(src.shape[0])
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


def interpolation_matrix(in_size, out_size, align_corners=True):
    """(out_size, in_size) bilinear weights; rows sum to 1.

    align_corners=True: src = i (in - 1) / (out - 1) (Caffe Interp, TF1 align_corners).
    align_corners=False: half-pixel centres, src = (i + 0.5) in / out - 0.5, clamped (PyTorch/TF2).
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
    i = np.arange(out_size, dtype=np.float64)
    if align_corners:
        src = i * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros(1)
    else:
        src = (i + 0.5) * in_size / out_size - 0.5
    return _matrix_from_coords(src, in_size)


def _check_size(size, what):
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"{what} must be two positive ints (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def _apply_separable(x_BxHxWxC, matrix_h, matrix_w):
    dtype = x_BxHxWxC.dtype if jnp.issubdtype(x_BxHxWxC.dtype, jnp.floating) else jnp.float32
    x = x_BxHxWxC.astype(dtype)
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", jnp.asarray(matrix_h, dtype), x, precision=hp)
    return jnp.einsum("pw,bowc->bopc", jnp.asarray(matrix_w, dtype), x, precision=hp)


def resize_bilinear(x_BxHxWxC, size, align_corners=True):
    """Bilinear resize of a BxHxWxC array to (h, w); integer inputs come back as float32."""
    if x_BxHxWxC.ndim != 4:
        raise ValueError(f"resize_bilinear expects BxHxWxC, got shape {x_BxHxWxC.shape}")
    out_h, out_w = _check_size(size, "size")
    _, in_h, in_w, _ = x_BxHxWxC.shape
    if (out_h, out_w) == (in_h, in_w) and align_corners:
        # The matrices would be identities; skip the work (and keep the values bit-exact).
        return x_BxHxWxC if jnp.issubdtype(x_BxHxWxC.dtype, jnp.floating) else (
            x_BxHxWxC.astype(jnp.float32))
    return _apply_separable(
        x_BxHxWxC,
        interpolation_matrix(in_h, out_h, align_corners),
        interpolation_matrix(in_w, out_w, align_corners),
    )


def upsample_logits(logits_BxhxwxK, size, output_stride=None):
    """Brings output-stride logits to the input size (H, W) for the loss, evaluation or CRF.

    Default: bilinear with align_corners=True, as the Caffe release (exactly aligned, logit i on
    pixel i * os, when H = (h - 1) * os + 1, e.g. 321 <-> 41 or 513 <-> 65). With `output_stride`,
    pixel p samples logit coordinate p / output_stride (clamped at the last logit), which keeps that
    alignment for every input size (e.g. 320 -> 40 logits).
    """
    if logits_BxhxwxK.ndim != 4:
        raise ValueError(f"upsample_logits expects BxhxwxK, got shape {logits_BxhxwxK.shape}")
    out_h, out_w = _check_size(size, "size")
    if output_stride is None:
        return resize_bilinear(logits_BxhxwxK, (out_h, out_w), align_corners=True)
    if int(output_stride) != output_stride or output_stride < 1:
        raise ValueError(f"output_stride must be a positive int, got {output_stride!r}")
    _, in_h, in_w, _ = logits_BxhxwxK.shape
    return _apply_separable(
        logits_BxhxwxK,
        _matrix_from_coords(np.arange(out_h) / output_stride, in_h),
        _matrix_from_coords(np.arange(out_w) / output_stride, in_w),
    )


def nearest_indices(in_size, out_size):
    """Source index round(i (in - 1) / (out - 1)) for each output i, in exact integer arithmetic."""
    if out_size == 1:
        return np.zeros(1, np.int64)
    i = np.arange(out_size, dtype=np.int64)
    # floor(x + 1/2) with x = i (in - 1) / (out - 1): halves round up, no float error.
    return (2 * i * (in_size - 1) + (out_size - 1)) // (2 * (out_size - 1))


def resize_labels_nearest(labels_BxHxW, size):
    """Nearest-neighbour label resize with the align_corners alignment of `resize_bilinear`.

    Output label (i, j) is labels[round(i (H - 1) / (h - 1)), round(j (W - 1) / (w - 1))]; used for
    the MSC branch losses (the Caffe release shrinks labels with the same corner alignment).
    """
    if labels_BxHxW.ndim != 3:
        raise ValueError(f"resize_labels_nearest expects BxHxW labels, got {labels_BxHxW.shape}")
    out_h, out_w = _check_size(size, "size")
    _, in_h, in_w = labels_BxHxW.shape
    rows = jnp.asarray(nearest_indices(in_h, out_h))
    cols = jnp.asarray(nearest_indices(in_w, out_w))
    return jnp.take(jnp.take(labels_BxHxW, rows, axis=1), cols, axis=2)


RESIZE_CONVENTIONS = ("caffe", "pytorch")


def scaled_size(size, scale, convention="caffe"):
    """Input size of an MSC branch.

    'caffe': int((size - 1) * scale) + 1 (321 -> 241 -> 161, the release's Interp layers);
    'pytorch': int(size * scale) (kazuto1011's MSC: 321 -> 240 -> 160).
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if convention not in RESIZE_CONVENTIONS:
        raise ValueError(f"resize convention {convention!r} is unknown; use {RESIZE_CONVENTIONS}")
    # A tiny epsilon keeps products such as 320 * 0.75 = 240 from landing just below an integer.
    if convention == "pytorch":
        return max(1, int(size * scale + 1e-9))
    return int((size - 1) * scale + 1e-9) + 1
