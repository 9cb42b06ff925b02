"""Jitted mean-field inference of the fully connected CRF (DeepLab-v2 §3.3; Krähenbühl 2011).

The model is Krähenbühl's (see `deeplab_jax.crf.permutohedral` for the details checked against the
C++ code): U = -log(clip(p, 1e-5, 1)), Q0 = softmax(-U), and per iteration

    Q <- softmax(-U + w2 * n_s * G_s(n_s * Q) + w1 * n_b * G_b(n_b * Q)),   n = 1 / sqrt(G(1))

with the pixel's own contribution included (Potts compatibility, symmetric normalisation).

* Spatial kernel G_s (w2 = pos_w, theta_gamma = pos_xy_std): computed exactly, as separable 1-D
  Gaussian convolutions along y and x with zero padding, truncated at radius ceil(4 std)
  (the dropped weight is < exp(-8) = 3.4e-4 of the centre tap). The reference approximates this
  kernel with a lattice too; using the exact Gaussian changes < 0.3% of labels (measured, see
  tests).
* Bilateral kernel G_b (w1 = bi_w, theta_alpha = bi_xy_std, theta_beta = bi_rgb_std): the
  permutohedral lattice in JAX (`deeplab_jax.crf.lattice`), the same lattice as the reference,
  with static shapes. A dense 5-D bilateral grid was the alternative; it is not usable at
  theta_beta = 3: at spacing 1 std the colour axes alone need 86^3 cells (x 21 classes x ~100
  spatial cells: 5 GB per grid for one VOC image), and sparse grids without the lattice's corner
  closure lost accuracy (88-96% labels equal; measured while choosing).

Everything is pure JAX: `jax.jit`, `jax.vmap` and `jax.grad` (with respect to the probabilities
and the weights bi_w, pos_w) work; shapes depend only on (H, W, K, batch), the standard deviations
and the lattice capacity, so one compilation serves a whole data set of one image size.
"""

import functools
import math
import typing

import jax
import jax.numpy as jnp
import numpy as np

from deeplab_jax.crf import lattice as lattice_lib
from deeplab_jax.crf.fast_math import softmax_over_classes
from deeplab_jax.crf.params import CRFParams, register_pytree

register_pytree()

UNARY_CLIP = 1e-5  # as pydensecrf.utils.unary_from_softmax
SPATIAL_TRUNCATION = 4.0  # Gaussian taps kept up to this many standard deviations
_NORM_EPS = 1e-20  # as the C++ NORMALIZE_SYMMETRIC


def default_capacity(height, width):
    """Lattice vertices reserved per image: H*W, but never fewer than 65536 (up to 6 H*W).

    Measured on photographs resized to 500x375: the bilateral lattice has 0.1-1.3 vertices per pixel
    for bi_xy_std 30-100 and bi_rgb_std 3-6 (up to 2.0 on a microscopy image at bi_xy_std=30); at
    1024x2048 0.03-0.9; small images need more per pixel (~3 at 48x64); pure noise reaches ~6, the
    worst case d+1. `dense_crf` retries with a larger capacity when a concrete image overflows.
    """
    pixels = int(height * width)
    return min(6 * pixels, max(pixels, 65536))


def gaussian_taps(std):
    """Unnormalised taps exp(-t^2 / (2 std^2)) for |t| <= ceil(4 std), float32."""
    radius = max(1, int(math.ceil(SPATIAL_TRUNCATION * std)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    return np.exp(-0.5 * (offsets / std) ** 2).astype(np.float32)


def spatial_filter(values_HxWxK, std):
    """Exact Gaussian filter sum_j exp(-|p_i - p_j|^2 / (2 std^2)) v_j, separably, zero padded."""
    taps = gaussian_taps(std)
    radius = len(taps) // 2

    def along(x, axis):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        padded = jnp.pad(x, pad)
        length = x.shape[axis]
        out = None
        for t, tap in enumerate(taps):
            term = np.float32(tap) * jax.lax.slice_in_dim(padded, t, t + length, axis=axis)
            out = term if out is None else out + term
        return out

    return along(along(values_HxWxK, 0), 1)


def bilateral_features(image_HxWx3, xy_std, rgb_std):
    """(x, y, r, g, b) / std per pixel as [H*W, 5] float32, in the reference's arithmetic.

    The standard deviations may be traced (the parameter search vmaps over them).
    """
    height, width, _ = image_HxWx3.shape
    xy_std = jnp.asarray(xy_std, jnp.float32)
    rgb_std = jnp.asarray(rgb_std, jnp.float32)
    xs = jnp.arange(width, dtype=jnp.float32) / xy_std
    ys = jnp.arange(height, dtype=jnp.float32) / xy_std
    position = jnp.stack([jnp.broadcast_to(xs[None, :], (height, width)),
                          jnp.broadcast_to(ys[:, None], (height, width))], axis=-1)
    colour = image_HxWx3.astype(jnp.float32) / rgb_std
    return jnp.concatenate([position, colour], axis=-1).reshape(height * width, 5)


class Prepared(typing.NamedTuple):
    """What the iterations need, computed once per image (independent of the weights)."""

    neg_unary: jax.Array  # [H, W, K] log(clip(p, 1e-5, 1))
    spatial_norm: jax.Array  # [H, W, 1]
    lattice: lattice_lib.Lattice
    bilateral_norm: jax.Array  # [H, W, 1]
    valid: jax.Array  # [H, W, 1] float32, 1 for real pixels (0 for padding)


def prepare(image_HxWx3, probs_HxWxK, bi_xy_std, bi_rgb_std, *, pos_xy_std, capacity,
            layout_stds=None, valid_HxW=None):
    """Unary, normalisations and bilateral lattice of one image.

    Args:
      bi_xy_std, bi_rgb_std: may be traced.
      pos_xy_std, capacity: static.
      layout_stds: static lower bounds (xy, rgb) of the standard deviations, which size the lattice
        key packing; default (bi_xy_std, bi_rgb_std), which must then be concrete.
      valid_HxW: optional mask; masked pixels (padding) take no part in any message, so a padded
        image behaves as the unpadded one (up to the lattice vertices the padding adds).
    """
    height, width, _ = probs_HxWxK.shape
    num_pixels = height * width
    if layout_stds is None:
        layout_stds = (float(bi_xy_std), float(bi_rgb_std))
    valid = (jnp.ones((height, width, 1), jnp.float32) if valid_HxW is None
             else valid_HxW.astype(jnp.float32)[..., None])
    neg_unary = jnp.log(jnp.clip(probs_HxWxK.astype(jnp.float32), UNARY_CLIP, 1.0))
    spatial_norm = 1.0 / jnp.sqrt(spatial_filter(valid, pos_xy_std) + _NORM_EPS)
    features = bilateral_features(image_HxWx3, bi_xy_std, bi_rgb_std)
    bounds = lattice_lib.feature_bounds(height, width, *layout_stds)
    lattice = lattice_lib.build(features, bounds, capacity)
    bilateral_norm = 1.0 / jnp.sqrt(
        lattice_lib.filter_(lattice, valid.reshape(num_pixels, 1)) + _NORM_EPS)
    return Prepared(neg_unary, spatial_norm, lattice,
                    bilateral_norm.reshape(height, width, 1), valid)


def default_class_chunk(height, width, num_classes):
    """Classes filtered together: all of them up to 2^23 pixel-classes (32 MB per float32 buffer),
    fewer above (Cityscapes 2048x1024: 4 at a time), which bounds the filters' temporaries."""
    return max(1, min(num_classes, (1 << 23) // (height * width)))


def iterate(prepared, pos_w, bi_w, *, pos_xy_std, iterations, class_chunk=None):
    """The mean-field iterations from Q0 = softmax(-U); returns Q [H, W, K] float32.

    Messages are computed for `class_chunk` classes at a time (a sequential loop; the Potts
    message of class k depends on Q_k only), so the filters' temporaries scale with the chunk, not
    with K. Q is kept as [chunks, H, W, chunk]; padding classes have energy -1e30 (Q = 0).
    """
    height, width, num_classes = prepared.neg_unary.shape
    num_pixels = height * width
    chunk = class_chunk or default_class_chunk(height, width, num_classes)
    num_chunks = -(-num_classes // chunk)
    pos_w = jnp.asarray(pos_w, jnp.float32)
    bi_w = jnp.asarray(bi_w, jnp.float32)
    spatial_scale = prepared.spatial_norm * prepared.valid
    bilateral_scale = prepared.bilateral_norm * prepared.valid
    neg_unary = jnp.pad(prepared.neg_unary, ((0, 0), (0, 0), (0, num_chunks * chunk - num_classes)),
                        constant_values=-1e30)
    neg_unary = neg_unary.reshape(height, width, num_chunks, chunk).transpose(2, 0, 1, 3)

    def energy(q_HxWxC, neg_unary_HxWxC):
        spatial = prepared.spatial_norm * spatial_filter(spatial_scale * q_HxWxC, pos_xy_std)
        scaled = (bilateral_scale * q_HxWxC).reshape(num_pixels, chunk)
        bilateral = prepared.bilateral_norm * lattice_lib.filter_(
            prepared.lattice, scaled).reshape(height, width, chunk)
        return neg_unary_HxWxC + pos_w * spatial + bi_w * bilateral

    def all_energies(q):
        if num_chunks == 1:
            return energy(q[0], neg_unary[0])[None]
        return jax.lax.map(lambda args: energy(*args), (q, neg_unary))

    def softmax(e):  # over the class axes (0 and 3)
        if num_chunks == 1:  # XLA:CPU runs this form faster (fast_math.softmax_over_classes)
            return softmax_over_classes(e[0])[None]
        e = e - jnp.max(e, axis=(0, 3), keepdims=True)
        e = jnp.exp(e)
        return e / jnp.sum(e, axis=(0, 3), keepdims=True)

    def iteration(q, _):
        return softmax(all_energies(q)), None

    q, _ = jax.lax.scan(iteration, softmax(neg_unary), None, length=iterations)
    return q.transpose(1, 2, 0, 3).reshape(height, width, num_chunks * chunk)[..., :num_classes]


def meanfield_single(image_HxWx3, probs_HxWxK, params: CRFParams, capacity):
    """One image: returns (Q [H, W, K] float32, number of bilateral lattice vertices).

    If the number of vertices exceeds `capacity`, the surplus vertices are dropped (the result is
    then approximate); callers check it (see `dense_crf`).
    """
    prepared = prepare(image_HxWx3, probs_HxWxK, params.bi_xy_std, params.bi_rgb_std,
                       pos_xy_std=params.pos_xy_std, capacity=capacity)
    q = iterate(prepared, params.pos_w, params.bi_w, pos_xy_std=params.pos_xy_std,
                iterations=params.iterations)
    return q, prepared.lattice.num_vertices


@functools.partial(jax.jit, static_argnames=("capacity",))
def meanfield(images_BxHxWx3, probs_BxHxWxK, params: CRFParams, capacity):
    """Batched mean-field CRF: returns (Q [B, H, W, K] float32, lattice vertices [B] int32).

    Inputs are not validated here (see `deeplab_jax.crf.dense_crf`); `params` weights may be traced
    (gradients), its standard deviations and iteration count are static.
    """
    return jax.vmap(meanfield_single, in_axes=(0, 0, None, None))(
        images_BxHxWx3, probs_BxHxWxK, params, capacity)
