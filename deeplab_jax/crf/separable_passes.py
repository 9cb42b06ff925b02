"""One pass of the separable bilateral filter as batched matrix products (see `crf.separable`).

A pass filters every line (row or column) of an image with the full position x colour weight
between pixels of that line. A line is cut into blocks of targets; each block is multiplied with
the window of (every stride-th) source pixels that can reach it within the band, or, when banding
would not save work, the whole line is one dense block. Everything here has static shapes: the
geometry is fixed by the image size, theta_alpha's static bound and the options.
"""

import math
import typing

import jax.numpy as jnp
import numpy as np

from deeplab_jax.crf.fast_math import exp_nonpositive

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


def _windows(strided_LxPxC, geo):
    """Padded lines at the source positions only (every stride-th pixel) -> source windows
    [lines, blocks, sources, C], by static slices only."""
    lines, _, channels = strided_LxPxC.shape
    if geo.halo == 0:
        return strided_LxPxC[:, None, :geo.sources]
    step = geo.block // geo.stride  # block and left padding are multiples of the stride
    blocks = strided_LxPxC[:, :(geo.num_blocks + 2) * step].reshape(
        lines, geo.num_blocks + 2, step, channels)
    return jnp.concatenate([blocks[:, k:k + geo.num_blocks] for k in range(3)], axis=2)


def _targets(padded_LxPxC, geo):
    lines, _, channels = padded_LxPxC.shape
    return padded_LxPxC[:, geo.left:geo.left + geo.num_blocks * geo.block].reshape(
        lines, geo.num_blocks, geo.block, channels)


def build_weights(target_colours_LxNx3, source_colours_LxNx3, geo, xy_std, truncation, dtype):
    """Weights of one pass for a batch of lines: [lines, blocks, targets, sources].

    target/source colours: the lines' colours divided by the passes' colour std, as the targets
    and as the sources see them (they differ when the paths' corners use a blurred image; the
    same array otherwise); xy_std may be traced. Weight between target position t and source
    position u of a line: exp(-(t-u)^2/(2 xy_std^2) - |c_t - c_u|^2 / 2) when
    |t - u| <= truncation * xy_std and u is a multiple of the stride, else 0 (padding sources
    carry zero values).
    """
    targets = _targets(_pad_line(target_colours_LxNx3, geo), geo)[:, :, :, None]  # [L, B, T, 1, 3]
    sources = _windows(_pad_line(source_colours_LxNx3, geo)[:, ::geo.stride], geo)[:, :, None]
    # Target t of any block sits at t + left in its window; source j at j * stride.
    offsets = (np.arange(geo.block)[:, None] + geo.left
               - geo.stride * np.arange(geo.sources)[None, :]).astype(np.float32)
    xy_std = jnp.asarray(xy_std, jnp.float32)
    spatial = 0.5 * jnp.square(offsets / xy_std)
    spatial = jnp.where(np.abs(offsets) <= truncation * xy_std, spatial, jnp.inf)
    colour = sum(jnp.square(targets[..., c] - sources[..., c]) for c in range(3))
    return exp_nonpositive(-(spatial[None, None] + 0.5 * colour)).astype(dtype)


def apply_weights(weights, values_LxNxC, geo, strided=False):
    """One pass: [lines, length, C] values -> [lines, length, C] messages (float32).

    strided: the values are given at the source positions only ([lines, ceil(length / stride),
    C]: the row pass computes only the rows the column pass reads).
    """
    lines, _, channels = values_LxNxC.shape
    if not strided:
        values_LxNxC = values_LxNxC[:, ::geo.stride]
    left = geo.left // geo.stride
    after = geo.padded // geo.stride - left - values_LxNxC.shape[1]
    sources = _windows(jnp.pad(values_LxNxC.astype(weights.dtype),
                               ((0, 0), (left, after), (0, 0))), geo)
    out = jnp.einsum("lbts,lbsc->lbtc", weights, sources, preferred_element_type=jnp.float32)
    return out.reshape(lines, geo.num_blocks * geo.block, channels)[:, :geo.length]


def chunk_lines(geo, lines, options):
    """Lines per chunk: as many as keep one chunk's weights under `options.chunk_bytes`."""
    per_line = geo.num_blocks * geo.block * geo.sources * np.dtype(options.weight_dtype).itemsize
    return max(1, min(lines, options.chunk_bytes // per_line))
