"""Mean-field CRF with a separable bilateral filter: dense matrix products only (TPU-ready).

The model is the fully connected CRF of DeepLab-v2 §3.3 (Krähenbühl & Koltun 2011), with the same
unary, Potts compatibility, symmetric normalisation and exact spatial kernel as
`deeplab_jax.crf.meanfield`. Only the bilateral kernel

    k(i, j) = exp(-|p_i - p_j|^2 / (2 theta_alpha^2) - |I_i - I_j|^2 / (2 theta_beta^2))

is approximated, by separable bilateral filtering (Pham & van Vliet, ICME 2005): a pass along every
row with the full position x colour weight between pixels of that row, then the same along every
column on the result. A pixel thus hears from another through the pixel in its row and the other's
column, which keeps colour edges (a plain separable Gaussian would blur across them) at the cost of
some paths that the exact 5-D kernel has and this one misses. The normalisation n = 1/sqrt(F(1))
uses the same approximate filter F, so messages stay balanced.

Each pass is a batched matrix product: per line (row or column) a [targets, sources] weight matrix
times the line's [sources, K] values, so the work lands on matrix units (TPU MXU, tensor cores)
instead of the sorts, scatter-adds and gathers of a lattice. To keep it cheap:

* banding: weights beyond `truncation` theta_alpha are zero (3 std: the spatial factor is 1.1% of
  the centre there); a line is cut into blocks of targets, each multiplied with the window of
  sources that can reach it (when the window is not shorter than the line, one dense block);
* strided sources: only positions divisible by `stride` along each pass send messages (the
  symmetric normalisation absorbs the scale);
* a wider colour std in the passes (`colour_scale` x theta_beta, default 2): a path needs its
  corner pixel to match both ends in colour, which in textured regions few do at theta_beta = 3,
  so the separable kernel at theta_beta carries much less mass than the exact one. Measured
  (benchmarks/README.md), x2 raises the labels equal to the exact CRF on 3 of 4 VOC-size inputs
  (e.g. 97.8 -> 98.3%) and the demo's mIoU gain kept from 35% to 59% (x4: 89%, but photographs
  drop to 96.7%);
* weights are built once per image and reused by every iteration when they fit
  `max_stored_bytes`; larger images rebuild them per iteration, a chunk of lines at a time (a
  loop: slower on XLA:CPU, see `filter_pass`), so the memory stays bounded (Cityscapes 1024x2048).

Everything has static shapes, float32 (optionally bfloat16 weights), no sort, no scatter and no
64-bit integers; `jax.jit`, `jax.vmap` and `jax.grad` (probabilities, bi_w, pos_w) work.
"""

import dataclasses
import functools
import math
import typing

import jax
import jax.numpy as jnp
import numpy as np

from deeplab_jax.crf import meanfield
from deeplab_jax.crf.params import CRFParams, register_pytree

register_pytree()

_NORM_EPS = 1e-20  # as meanfield (the C++ NORMALIZE_SYMMETRIC)


@dataclasses.dataclass(frozen=True)
class SeparableOptions:
    """Static settings of the separable filter (defaults: measured in benchmarks/README.md)."""

    stride: int = 2  # source pixels taken every `stride` along each pass
    colour_scale: float = 2.0  # the passes' colour std is colour_scale * theta_beta (see above)
    truncation: float = 3.0  # band half-width in units of theta_alpha
    min_block: int = 128  # targets per band block at least (small matrix products are slow)
    weight_dtype: str = "bfloat16"  # of the weights and values in the products ("float32")
    max_stored_bytes: int = 512 << 20  # keep both passes' weights across iterations up to this
    chunk_bytes: int = 64 << 20  # weight bytes per chunk of lines (bounds the temporaries)

    def validate(self):
        if self.stride < 1 or self.min_block < 1 or self.truncation <= 0 or self.colour_scale <= 0:
            raise ValueError(f"SeparableOptions needs stride >= 1, min_block >= 1, truncation > 0 "
                             f"and colour_scale > 0, got {self}")
        if self.weight_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"weight_dtype must be float32 or bfloat16, got {self.weight_dtype}")
        return self


_ALIGN = 16  # sources (the contraction) padded to a multiple of this: measured 1.5x faster


class Geometry(typing.NamedTuple):
    """How one pass cuts a line of `length` pixels into blocks of targets (all static).

    Banded (halo 1): block b's targets [b T, (b+1) T) read the source window [(b-1) T, (b+2) T),
    which covers the band when T >= its radius. Dense (halo 0): one block, the whole line.
    """

    length: int
    block: int  # targets per block (T)
    halo: int  # 1: banded, 0: dense
    num_blocks: int
    stride: int
    sources: int  # source positions per window (every stride-th; padded with zero weights)

    @property
    def left(self):  # padding before the line (one block when banded)
        return self.halo * self.block

    @property
    def padded(self):  # line length after padding
        return max((self.num_blocks + 2 * self.halo) * self.block, self.sources * self.stride)


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def geometry(length, radius, options):
    """Banded blocks of >= max(radius, min_block) targets, or one dense block if not cheaper."""
    stride = options.stride
    dense = Geometry(length, _round_up(length, 8), 0, 1, stride,
                     _round_up(-(-length // stride), _ALIGN))
    block = _round_up(max(radius, options.min_block), _ALIGN * stride)
    banded = Geometry(length, block, 1, -(-length // block), stride, 3 * block // stride)
    cost = lambda g: g.num_blocks * g.block * g.sources
    return banded if cost(banded) < cost(dense) else dense


def band_radius(xy_std, options):
    """Static band half-width in pixels for a (static, or static upper bound of) theta_alpha."""
    return int(math.ceil(options.truncation * float(xy_std)))


def _pad_line(values_LxNxC, geo):
    after = geo.padded - geo.left - geo.length
    return jnp.pad(values_LxNxC, ((0, 0), (geo.left, after), (0, 0)))


def _windows(padded_LxPxC, geo):
    """Padded lines -> source windows [lines, blocks, sources, C], by static slices only."""
    lines, _, channels = padded_LxPxC.shape
    if geo.halo == 0:
        return padded_LxPxC[:, None, :geo.sources * geo.stride:geo.stride]
    blocks = padded_LxPxC[:, :(geo.num_blocks + 2) * geo.block].reshape(
        lines, geo.num_blocks + 2, geo.block, channels)
    window = jnp.concatenate([blocks[:, k:k + geo.num_blocks] for k in range(3)], axis=2)
    return window[:, :, ::geo.stride]


def _targets(padded_LxPxC, geo):
    lines, _, channels = padded_LxPxC.shape
    return padded_LxPxC[:, geo.left:geo.left + geo.num_blocks * geo.block].reshape(
        lines, geo.num_blocks, geo.block, channels)


# 2^f on [0, 1): degree-5 polynomial fitted for relative error (max 1.9e-7, float32's own size).
_EXP2_COEFFS = (1.0, 0.6931516, 0.24016437, 0.05579373, 0.00903118, 0.00185875)


def exp_nonpositive(x):
    """exp(x) for x <= 0 as 2^n * p(f): elementwise float and int32 bit arithmetic only.

    XLA:CPU's exp took 3.7 ns per element on the 2-core VM (48M exps: 178 ms), which made building
    the weights cost more than all ten iterations; this is several times faster and as accurate in
    float32 (relative error < 3e-7). Underflows to 0 below exp(-87).
    """
    y = jnp.maximum(x, -87.0) * np.float32(1.4426950408889634)  # log2(e)
    n = jnp.floor(y)
    f = y - n
    p = np.float32(_EXP2_COEFFS[-1])
    for c in _EXP2_COEFFS[-2::-1]:
        p = p * f + np.float32(c)
    scale = jax.lax.bitcast_convert_type((n.astype(jnp.int32) + 127) << 23, jnp.float32)
    return jnp.where(x < -87.0, 0.0, scale * p)


def build_weights(colours_LxNx3, geo, xy_std, truncation, dtype):
    """Weights of one pass for a batch of lines: [lines, blocks, targets, sources].

    colours: the line's colours divided by theta_beta; xy_std may be traced. Weight between target
    position t and source position u of a line: exp(-(t-u)^2/(2 xy_std^2) - |c_t - c_u|^2 / 2) when
    |t - u| <= truncation * xy_std and u is a multiple of the stride, else 0 (padding sources
    carry zero values).
    """
    padded = _pad_line(colours_LxNx3, geo)
    targets = _targets(padded, geo)[:, :, :, None]  # [lines, blocks, T, 1, 3]
    sources = _windows(padded, geo)[:, :, None]  # [lines, blocks, 1, S, 3]
    # Target t of any block sits at t + left in its window; source j at j * stride.
    offsets = (np.arange(geo.block)[:, None] + geo.left
               - geo.stride * np.arange(geo.sources)[None, :]).astype(np.float32)
    xy_std = jnp.asarray(xy_std, jnp.float32)
    spatial = 0.5 * jnp.square(offsets / xy_std)
    spatial = jnp.where(np.abs(offsets) <= truncation * xy_std, spatial, jnp.inf)
    colour = sum(jnp.square(targets[..., c] - sources[..., c]) for c in range(3))
    return exp_nonpositive(-(spatial[None, None] + 0.5 * colour)).astype(dtype)


def apply_weights(weights, values_LxNxC, geo):
    """One pass: [lines, length, C] values -> [lines, length, C] messages (float32)."""
    lines, _, channels = values_LxNxC.shape
    sources = _windows(_pad_line(values_LxNxC.astype(weights.dtype), geo), geo)
    out = jnp.einsum("lbts,lbsc->lbtc", weights, sources, preferred_element_type=jnp.float32)
    return out.reshape(lines, geo.num_blocks * geo.block, channels)[:, :geo.length]


def chunk_lines(geo, lines, options):
    """Lines per chunk: as many as keep one chunk's weights under `options.chunk_bytes`."""
    per_line = geo.num_blocks * geo.block * geo.sources * np.dtype(options.weight_dtype).itemsize
    return max(1, min(lines, options.chunk_bytes // per_line))


def _chunked(array, chunk):
    """[lines, ...] -> [chunks, chunk, ...], the last chunk padded with zero lines."""
    num = -(-array.shape[0] // chunk)
    padded = jnp.pad(array, [(0, num * chunk - array.shape[0])] + [(0, 0)] * (array.ndim - 1))
    return padded.reshape((num, chunk) + array.shape[1:])


def _map_chunks(fn, chunked_arrays):
    """fn over the leading (chunk) axis: a plain call for one chunk, else `lax.map` (a loop, so
    only one chunk's temporaries are live)."""
    if chunked_arrays[0].shape[0] == 1:
        return fn(*(a[0] for a in chunked_arrays))[None]
    return jax.lax.map(lambda args: fn(*args), tuple(chunked_arrays))


class Pass(typing.NamedTuple):
    """One direction's precomputed state: colours along its lines and, if stored, the weights."""

    colours: jax.Array  # [lines, length, 3] colour / theta_beta
    weights: typing.Optional[jax.Array]  # [lines, blocks, targets, sources], or None: rebuilt


def filter_pass(state, values_LxNxC, geo, xy_std, options):
    """One pass of the filter over all lines.

    Stored weights: one batched product over all lines. XLA:CPU runs a product inside a loop
    (`lax.map`, `scan`, `fori_loop`) 5x slower than the same product unlooped (measured: 376 lines
    of [504, 256] x [256, 21] bfloat16, 26-29 ms in one product, 126-161 ms in 2-4 loop steps), so
    loops are kept for the rebuilt weights, where they bound the memory to one chunk's weights.
    """
    if state.weights is not None:
        return apply_weights(state.weights, values_LxNxC, geo)
    lines = values_LxNxC.shape[0]
    chunk = chunk_lines(geo, lines, options)
    dtype = jnp.dtype(options.weight_dtype)

    @jax.checkpoint  # gradients rebuild the weights rather than keep every chunk's
    def rebuild_and_apply(colours, values):
        weights = build_weights(colours, geo, xy_std, options.truncation, dtype)
        return apply_weights(weights, values, geo)

    out = _map_chunks(rebuild_and_apply, (_chunked(state.colours, chunk),
                                          _chunked(values_LxNxC, chunk)))
    return out.reshape((-1,) + out.shape[2:])[:lines]


class Prepared(typing.NamedTuple):
    """What the iterations need, computed once per image (independent of the weights w1, w2)."""

    neg_unary: jax.Array  # [H, W, K] log(clip(p, 1e-5, 1))
    spatial_norm: jax.Array  # [H, W, 1]
    bilateral_norm: jax.Array  # [H, W, 1]
    valid: jax.Array  # [H, W, 1] float32
    rows: Pass  # lines = the H rows, along W
    columns: Pass  # lines = the W columns, along H


class Layout(typing.NamedTuple):
    """Static geometry of both passes and whether the weights are stored."""

    row: Geometry
    column: Geometry
    store: bool


def layout(height, width, xy_std, options):
    """The geometries of both passes for a static theta_alpha (or an upper bound of it)."""
    radius = band_radius(xy_std, options)
    row, column = geometry(width, radius, options), geometry(height, radius, options)
    itemsize = np.dtype(options.weight_dtype).itemsize
    stored = itemsize * (height * row.num_blocks * row.block * row.sources
                         + width * column.num_blocks * column.block * column.sources)
    return Layout(row, column, stored <= options.max_stored_bytes)


def separable_filter(prepared, values_HxWxC, lay, xy_std, options):
    """F(v): the row pass, then the column pass; [H, W, C] -> [H, W, C] float32."""
    rows = filter_pass(prepared.rows, values_HxWxC, lay.row, xy_std, options)
    columns = filter_pass(prepared.columns, rows.transpose(1, 0, 2), lay.column, xy_std, options)
    return columns.transpose(1, 0, 2)


def prepare(image_HxWx3, probs_HxWxK, bi_xy_std, bi_rgb_std, *, pos_xy_std, lay, options,
            valid_HxW=None):
    """Unary, normalisations and (when `lay.store`) both passes' weights of one image.

    bi_xy_std and bi_rgb_std may be traced (the band follows `lay`, built from a static bound).
    """
    height, width, _ = probs_HxWxK.shape
    valid = (jnp.ones((height, width, 1), jnp.float32) if valid_HxW is None
             else valid_HxW.astype(jnp.float32)[..., None])
    neg_unary = jnp.log(jnp.clip(probs_HxWxK.astype(jnp.float32), meanfield.UNARY_CLIP, 1.0))
    spatial_norm = 1.0 / jnp.sqrt(meanfield.spatial_filter(valid, pos_xy_std) + _NORM_EPS)
    colours = image_HxWx3.astype(jnp.float32) / (
        jnp.asarray(bi_rgb_std, jnp.float32) * options.colour_scale)
    passes = []
    for geo, lines in ((lay.row, colours), (lay.column, colours.transpose(1, 0, 2))):
        weights = None
        if lay.store:  # one fused elementwise computation, written once in weight_dtype
            weights = build_weights(lines, geo, bi_xy_std, options.truncation,
                                    jnp.dtype(options.weight_dtype))
        passes.append(Pass(lines, weights))
    prepared = Prepared(neg_unary, spatial_norm, None, valid, *passes)
    bilateral_norm = 1.0 / jnp.sqrt(
        separable_filter(prepared, valid, lay, bi_xy_std, options) + _NORM_EPS)
    return prepared._replace(bilateral_norm=bilateral_norm)


def iterate(prepared, pos_w, bi_w, *, pos_xy_std, bi_xy_std, iterations, lay, options):
    """Mean-field iterations from Q0 = softmax(-U); returns Q [H, W, K] float32."""
    pos_w = jnp.asarray(pos_w, jnp.float32)
    bi_w = jnp.asarray(bi_w, jnp.float32)
    spatial_scale = prepared.spatial_norm * prepared.valid
    bilateral_scale = prepared.bilateral_norm * prepared.valid

    def iteration(q, _):
        spatial = prepared.spatial_norm * meanfield.spatial_filter(spatial_scale * q, pos_xy_std)
        bilateral = prepared.bilateral_norm * separable_filter(
            prepared, bilateral_scale * q, lay, bi_xy_std, options)
        return jax.nn.softmax(prepared.neg_unary + pos_w * spatial + bi_w * bilateral), None

    q, _ = jax.lax.scan(iteration, jax.nn.softmax(prepared.neg_unary), None, length=iterations)
    return q


def separable_single(image_HxWx3, probs_HxWxK, params: CRFParams, options):
    height, width, _ = probs_HxWxK.shape
    lay = layout(height, width, params.bi_xy_std, options)
    prepared = prepare(image_HxWx3, probs_HxWxK, params.bi_xy_std, params.bi_rgb_std,
                       pos_xy_std=params.pos_xy_std, lay=lay, options=options)
    return iterate(prepared, params.pos_w, params.bi_w, pos_xy_std=params.pos_xy_std,
                   bi_xy_std=params.bi_xy_std, iterations=params.iterations, lay=lay,
                   options=options)


@functools.partial(jax.jit, static_argnames=("options",))
def separable(images_BxHxWx3, probs_BxHxWxK, params: CRFParams, options=SeparableOptions()):
    """Batched separable mean-field CRF: Q [B, H, W, K] float32 (inputs not validated here)."""
    return jax.vmap(separable_single, in_axes=(0, 0, None, None))(
        images_BxHxWx3, probs_BxHxWxK, params, options)
