"""Mean-field CRF with a separable bilateral filter: dense matrix products only (TPU-ready).

The model is the fully connected CRF of DeepLab-v2 §3.3 (Krähenbühl & Koltun 2011), with the same
unary, Potts compatibility and exact spatial kernel (with its symmetric normalisation) as
`deeplab_jax.crf.meanfield`. Only the bilateral message is computed differently: its kernel

    k(i, j) = exp(-|p_i - p_j|^2 / (2 theta_alpha^2) - |I_i - I_j|^2 / (2 theta_beta^2))

is approximated, by separable bilateral filtering (Pham & van Vliet, ICME 2005): a pass along every
row with the full position x colour weight between pixels of that row, then the same along every
column on the result. A pixel thus hears from another through the pixel in its row and the other's
column, which keeps colour edges (a plain separable Gaussian would blur across them) at the cost of
some paths that the exact 5-D kernel has and this one misses. Its normaliser F(1) uses the same
approximate filter F, so messages stay balanced.

Two choices make the approximation carry the exact CRF's effect (benchmarks/README.md, "Separable
method"; DeepLab-v2 parameters):

* `normalisation="row"` (default): the message is F(Q) / F(1), a weighted average of the other
  pixels' Q, instead of the exact CRF's symmetric n * F(n * Q) with n = 1/sqrt(F(1)). The
  separable kernel is not symmetric and is dominated by each pixel's own weight in textured
  regions, and with the symmetric form the pixels whose F(1) is smallest send the loudest
  messages. Measured on the demo val set (mIoU gain kept of the exact CRF's): 0.65 symmetric,
  0.85 row (photographs: labels equal to the exact CRF 97.8-98.6% either way);
* `corner_blur` (default 0.7 px): a path from pixel j to pixel i passes the corner pixel c in i's
  column and j's row and is weighted by the colour match of both legs, |I_i - I_c| and |I_c - I_j|.
  In a textured region the corner's own noise enters both legs and most paths die, where the
  exact kernel compares I_i with I_j once. The corner's colour is therefore taken from the image
  blurred by a Gaussian of `corner_blur` pixels (the legs' ends keep their own colours): across an
  edge the path still pays the full colour difference once, inside a noisy region it no longer
  pays the corner's noise twice. Demo gain 0.85 -> 0.91 with row normalisation.

Each pass is a batched matrix product: per line (row or column) a [targets, sources] weight matrix
times the line's [sources, K] values, so the work lands on matrix units (TPU MXU, tensor cores)
instead of the sorts, scatter-adds and gathers of a lattice. To keep it cheap:

* banding: weights beyond `truncation` theta_alpha are zero (3 std: the spatial factor is 1.1% of
  the centre there); a line is cut into blocks of targets, each multiplied with the window of
  sources that can reach it (when the window is not shorter than the line, one dense block);
* strided sources: only positions divisible by `stride` along each pass send messages (the
  normalisation absorbs the scale);
* a wider colour std in the passes (`colour_scale` x theta_beta, default 2): a path needs its
  corner pixel to match both ends in colour, so at theta_beta the separable kernel carries much
  less mass than the exact one (symmetric normalisation, no corner blur: demo gain 0.35 at x1,
  0.59 at x2; x3 and more cost agreement on photographs, e.g. chelsea 97.4% at x3);
* the row pass filters only the rows the column pass reads (every stride-th): exact, and it
  halves the row pass's products and weights at stride 2;
* weights are built once per image and reused by every iteration when they fit
  `max_stored_bytes`; larger images rebuild them per iteration, a chunk of lines at a time (a
  loop: slower on XLA:CPU, see `separable_filter`), reading and writing the chunks in place in
  [H, W, *] arrays and applying the mean-field update to each chunk of columns as it leaves the
  column pass, so the memory stays bounded (Cityscapes 1024x2048: below pydensecrf2's peak).

Everything has static shapes, float32 (optionally bfloat16 weights), no sort, no scatter and no
64-bit integers; `jax.jit`, `jax.vmap` and `jax.grad` (probabilities, bi_w, pos_w) work.
"""

import dataclasses
import functools
import typing

import jax
import jax.numpy as jnp
import numpy as np

from deeplab_jax.crf import meanfield
from deeplab_jax.crf.fast_math import softmax_over_classes
from deeplab_jax.crf.params import CRFParams, register_pytree
from deeplab_jax.crf.separable_passes import (Geometry, apply_weights, band_radius, build_weights,
                                              chunk_lines, geometry)

register_pytree()

_NORM_EPS = 1e-20  # as meanfield (the C++ NORMALIZE_SYMMETRIC)
_NORM_CHANNELS = 8  # channels of the normalisation's filter input (see `prepare`)


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
    normalisation: str = "row"  # "row": F(Q) / F(1); "symmetric": n F(n Q), n = F(1)^-1/2
    corner_blur: float = 0.7  # Gaussian std (pixels) of the corners' colours; 0: the image's own

    def validate(self):
        if (self.stride < 1 or self.min_block < 1 or self.truncation <= 0
                or self.colour_scale <= 0 or self.corner_blur < 0):
            raise ValueError(f"SeparableOptions needs stride >= 1, min_block >= 1, truncation > 0, "
                             f"colour_scale > 0 and corner_blur >= 0, got {self}")
        if self.weight_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"weight_dtype must be float32 or bfloat16, got {self.weight_dtype}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got "
                             f"{self.normalisation!r}")
        return self


NORMALISATIONS = ("row", "symmetric")


def _take_lines(array_HxWxC, axis, start, count, step=1):
    """Lines start, start + 1, ... (count of them) of an [H, W, C] array's every step-th line, as
    [count, length, C]: rows (axis 0) or columns (axis 1, only this chunk transposed)."""
    lines = jax.lax.dynamic_slice_in_dim(array_HxWxC, start * step, (count - 1) * step + 1, axis)
    lines = jax.lax.slice_in_dim(lines, 0, None, step, axis)
    return lines if axis == 0 else lines.transpose(1, 0, 2)


def _over_line_chunks(fn, out, axis, chunk, step=1):
    """out[lines] = fn(take) for chunks of `chunk` lines along `axis` of out [H, W, C].

    `take(array)` gives the chunk's lines of any [H, W, *] array as [chunk, length, *] (of its
    every step-th line: out holds only those, ceil(H / step) rows for axis 0); fn returns
    the chunk's [chunk, length, C] result. A `fori_loop` writes each chunk into `out` in place, so
    beside the full-size input and output only one chunk's temporaries are live. The last chunk
    starts at lines - chunk (no padding): lines it shares with the previous chunk are computed
    twice, identically, as every line's result depends on that line only.
    """
    lines = out.shape[axis]
    num = -(-lines // chunk)

    def body(index, out):
        start = jnp.minimum(index * chunk, lines - chunk)
        result = fn(lambda array: _take_lines(array, axis, start, chunk, step))
        if axis == 1:
            result = result.transpose(1, 0, 2)
        return jax.lax.dynamic_update_slice_in_dim(out, result.astype(out.dtype), start, axis)

    if num == 1:
        return body(0, out)
    return jax.lax.fori_loop(0, num, body, out)


def pass_weights(corners_LxNx3, colours_LxNx3, geo, xy_std, options, row):
    """One pass's weights for a batch of lines of corner and own colours. A path's corner is the
    row pass's target and the column pass's source; the other end keeps its own colour."""
    targets, sources = ((corners_LxNx3, colours_LxNx3) if row
                        else (colours_LxNx3, corners_LxNx3))
    return build_weights(targets, sources, geo, xy_std, options.truncation,
                         jnp.dtype(options.weight_dtype))


def _identity_epilogue(message, take):
    del take
    return message


def separable_filter(prepared, values_HxWxC, lay, xy_std, options, scale=None, epilogue=None):
    """epilogue(F(scale * v)): the row pass, then the column pass; [H, W, C] -> [H, W, C].

    `scale` ([H, W, 1] or None) multiplies the values as they enter the row pass; `epilogue`
    (message, take) -> [H, W, C] float32 maps the message, where take(array) selects the same
    pixels of any [H, W, *] array (it lets the mean-field update run on each chunk of columns as
    it leaves the column pass, so the full-size message is never materialised).

    Stored weights: each pass is one batched product over all lines. XLA:CPU runs a product inside
    a loop (`lax.map`, `scan`, `fori_loop`) 5x slower than the same product unlooped (measured: 376
    lines of [504, 256] x [256, 21] bfloat16, 26-29 ms in one product, 126-161 ms in 2-4 loop
    steps), so loops are kept for the rebuilt weights, where they bound the memory: per chunk of
    lines the weights are rebuilt and applied (`_over_line_chunks`), reading the lines straight
    from the [H, W, *] arrays.
    """
    epilogue = epilogue or _identity_epilogue
    dtype = jnp.dtype(options.weight_dtype)
    scaled = (lambda take: take(values_HxWxC)) if scale is None else (
        lambda take: take(scale) * take(values_HxWxC))
    # Only every stride-th row is a source of the column pass, so the row pass filters those rows
    # alone (exact: the other rows' row messages would never be read) and hands them on strided.
    stride = options.stride
    if lay.store:
        rows = apply_weights(prepared.rows, scaled(lambda array: array[::stride]),
                             lay.row)
        columns = apply_weights(prepared.columns, rows.transpose(1, 0, 2), lay.column,
                                strided=True)
        return epilogue(columns.transpose(1, 0, 2), lambda array: array)

    def rebuild_and_apply(take, values, geo, row):
        @jax.checkpoint  # gradients rebuild the weights rather than keep every chunk's
        def rebuild_and_apply_(corners, colours, values):
            weights = pass_weights(corners, colours, geo, xy_std, options, row)
            return apply_weights(weights, values, geo, strided=not row)

        return rebuild_and_apply_(take(prepared.corner_colours), take(prepared.colours), values)

    height, width, channels = values_HxWxC.shape
    # The column pass casts its input to the weight dtype, so holding the row pass's result in it
    # changes nothing and halves that buffer in bfloat16.
    source_rows = -(-height // stride)
    rows = _over_line_chunks(
        lambda take: rebuild_and_apply(take, scaled(take), lay.row, row=True),
        jnp.zeros((source_rows, width, channels), dtype), 0,
        chunk_lines(lay.row, source_rows, options), stride)
    return _over_line_chunks(
        lambda take: epilogue(rebuild_and_apply(take, take(rows), lay.column, row=False), take),
        jnp.zeros((height, width, channels), jnp.float32), 1,
        chunk_lines(lay.column, width, options))


class Prepared(typing.NamedTuple):
    """What the iterations need, computed once per image (independent of the weights w1, w2)."""

    neg_unary: jax.Array  # [H, W, K] log(clip(p, 1e-5, 1))
    spatial_norm: jax.Array  # [H, W, 1]
    # The bilateral message is bilateral_norm * F(bilateral_source * Q): row normalisation
    # 1 / F(1) and valid; symmetric n and n * valid, n = 1 / sqrt(F(1)).
    bilateral_norm: jax.Array  # [H, W, 1]
    bilateral_source: jax.Array  # [H, W, 1]
    valid: jax.Array  # [H, W, 1] float32
    colours: jax.Array  # [H, W, 3] colour / (colour_scale * theta_beta)
    corner_colours: jax.Array  # [H, W, 3] the same of the blurred image (the paths' corners)
    # Stored weights [lines, blocks, targets, sources] of each pass, or None (rebuilt per
    # iteration). The row pass has only every stride-th row (the column pass's sources).
    rows: typing.Optional[jax.Array]
    columns: typing.Optional[jax.Array]  # lines = the W columns


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
    stored = itemsize * (-(-height // options.stride) * row.num_blocks * row.block * row.sources
                         + width * column.num_blocks * column.block * column.sources)
    return Layout(row, column, stored <= options.max_stored_bytes)


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
    colour_std = jnp.asarray(bi_rgb_std, jnp.float32) * options.colour_scale
    colours = image_HxWx3.astype(jnp.float32) / colour_std
    corners = colours
    if options.corner_blur > 0:  # a Gaussian average over the valid pixels only
        blur = functools.partial(meanfield.spatial_filter, std=options.corner_blur)
        corners = blur(colours * valid) / (blur(valid) + _NORM_EPS)
    rows = columns = None
    if lay.store:  # one fused elementwise computation per pass, written once in weight_dtype
        stride = options.stride
        rows = pass_weights(corners[::stride], colours[::stride], lay.row, bi_xy_std, options,
                            row=True)
        columns = pass_weights(corners.transpose(1, 0, 2), colours.transpose(1, 0, 2),
                               lay.column, bi_xy_std, options, row=False)
    prepared = Prepared(neg_unary, spatial_norm, None, None, valid, colours, corners, rows,
                        columns)
    # F(1) filtered as 8 identical channels: with one channel XLA:CPU turns the products into
    # matrix-vector products that it computes after converting all the weights to float32 (~240
    # MB at VOC size), which made `prepare` 1.7x slower (benchmarks/README.md).
    ones = jnp.broadcast_to(valid, (height, width, _NORM_CHANNELS))
    mass = separable_filter(prepared, ones, lay, bi_xy_std, options)[..., :1] + _NORM_EPS
    if options.normalisation == "row":
        return prepared._replace(bilateral_norm=1.0 / mass, bilateral_source=valid)
    norm = 1.0 / jnp.sqrt(mass)
    return prepared._replace(bilateral_norm=norm, bilateral_source=norm * valid)


def iterate(prepared, pos_w, bi_w, *, pos_xy_std, bi_xy_std, iterations, lay, options):
    """Mean-field iterations from Q0 = softmax(-U); returns Q [H, W, K] float32."""
    pos_w = jnp.asarray(pos_w, jnp.float32)
    bi_w = jnp.asarray(bi_w, jnp.float32)
    spatial_scale = prepared.spatial_norm * prepared.valid

    def iteration(q, _):
        spatial = prepared.spatial_norm * meanfield.spatial_filter(spatial_scale * q, pos_xy_std)

        def update(bilateral, take):  # on each chunk of pixels as the bilateral pass ends
            return softmax_over_classes(take(prepared.neg_unary) + pos_w * take(spatial)
                                        + bi_w * (take(prepared.bilateral_norm) * bilateral))

        return separable_filter(prepared, q, lay, bi_xy_std, options,
                                scale=prepared.bilateral_source,
                                epilogue=update), None

    q, _ = jax.lax.scan(iteration, softmax_over_classes(prepared.neg_unary), None,
                        length=iterations)
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
    """Batched separable mean-field CRF: Q [B, H, W, K] float32 (inputs not validated here).

    Images whose weights are stored run side by side (`vmap`); larger ones one after another
    (`lax.map`): their memory stays one image's, and their chunk loops' dynamic slices stay
    slices (batched, `vmap` turns them into gathers and scatters).
    """
    height, width = images_BxHxWx3.shape[1:3]
    single = functools.partial(separable_single, params=params, options=options)
    if layout(height, width, params.bi_xy_std, options).store:
        return jax.vmap(single)(images_BxHxWx3, probs_BxHxWxK)
    if images_BxHxWx3.shape[0] == 1:
        return single(images_BxHxWx3[0], probs_BxHxWxK[0])[None]
    return jax.lax.map(lambda args: single(*args), (images_BxHxWx3, probs_BxHxWxK))
