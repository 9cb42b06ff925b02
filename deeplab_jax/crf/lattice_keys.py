"""Simplices and integer vertex keys of the permutohedral lattice (Adams et al. 2010, §3-4).

`simplex` finds each point's enclosing simplex in the float32 arithmetic of Krähenbühl's SSE code
(the reference that DeepLab-v2 §3.3 uses, reproduced in `deeplab_jax.crf.permutohedral`), so that
the JAX lattice has exactly the reference's vertices. `KeyLayout` packs a lattice point into one
integer key so that a single integer sort groups equal vertices (see `deeplab_jax.crf.lattice`).

Lattice points are integer vectors c_0..c_d with sum 0 whose coordinates are all congruent modulo
d+1 (residue r). Packing each coordinate over the bounding box of the elevated features wastes
~16 bits at d = 5 (the features fill a thin slanted slab of that box), so the key uses the
coordinates the elevation makes "triangular" instead. With T_j = -(c_{j+1} + ... + c_d) / (j+1),
an elevated feature point has T_j - c_j = j s_{j-1} f_{j-1} (s the lattice scale factors): each
digit a_j = (c_j - r) / (d+1) - floor(T_j / (d+1)) spans about one feature's range, and c_j is
recovered from a_j and the higher coordinates (the map is triangular, hence injective). Simplex
corners and blur neighbours lie a few units off the elevated point; those offsets are bounded
exactly at trace time (over every simplex orientation), so the digit ranges below are safe.
Digits get power-of-two widths (packing and unpacking are shifts and masks).
"""

import itertools
import math

import jax.numpy as jnp
import numpy as np


def lattice_scales(d):
    """Per-feature scale sqrt(2/3) (d+1) / sqrt((i+1)(i+2)) of the elevation (float64)."""
    return (np.sqrt(2.0 / 3.0) * (d + 1)
            / np.sqrt((np.arange(d) + 2.0) * (np.arange(d) + 1.0)))


def simplex(features_Nxd):
    """(rem0 [N, d+1] int32, rank [N, d+1] int32, barycentric weights [N, d+1] float32).

    Simplex corner k of point i has coordinates rem0[i] + k - (d+1) [rank[i] > d - k].
    Float32 operation order follows the reference's SSE path so that the simplices agree.
    """
    num_points, d = features_Nxd.shape
    features_Nxd = features_Nxd.astype(jnp.float32)
    scale = lattice_scales(d).astype(np.float32)
    elevated = [None] * (d + 1)
    running = jnp.zeros((num_points,), jnp.float32)
    for j in range(d, 0, -1):
        scaled = features_Nxd[:, j - 1] * scale[j - 1]
        elevated[j] = running - np.float32(j) * scaled
        running = running + scaled
    elevated[0] = running
    elevated_NxD1 = jnp.stack(elevated, axis=1)
    down = np.float32(1.0) / np.float32(d + 1)
    rounded = jnp.round(elevated_NxD1 * down)  # half to even, as the SSE conversion
    rem0 = rounded * np.float32(d + 1)
    coord_sum = jnp.sum(rounded, axis=1).astype(jnp.int32)
    residual = elevated_NxD1 - rem0
    rank_columns = [jnp.zeros((num_points,), jnp.int32) for _ in range(d + 1)]
    for i in range(d):
        for j in range(i + 1, d + 1):
            i_below_j = (residual[:, i] < residual[:, j]).astype(jnp.int32)
            rank_columns[i] = rank_columns[i] + i_below_j
            rank_columns[j] = rank_columns[j] + (1 - i_below_j)
    rank = jnp.stack(rank_columns, axis=1) + coord_sum[:, None]
    shift = (d + 1) * ((rank < 0).astype(jnp.int32) - (rank > d).astype(jnp.int32))
    rank = rank + shift
    rem0 = rem0 + shift.astype(jnp.float32)
    value = (elevated_NxD1 - rem0) * down
    # value listed by rank: by_rank[:, r] = value of the coordinate whose rank is r (exact selects).
    by_rank = jnp.stack([
        sum(jnp.where(rank[:, i] == r, value[:, i], np.float32(0.0)) for i in range(d + 1))
        for r in range(d + 1)], axis=1)
    descending = by_rank[:, ::-1]
    weights = jnp.concatenate([
        descending[:, :1] + (np.float32(1.0) - by_rank[:, :1]),
        descending[:, 1:] - descending[:, :-1]], axis=1)
    return rem0.astype(jnp.int32), rank, weights


def corner_coordinates(rem0_NxD1, rank_NxD1, corner):
    """The d+1 int32 coordinates [N] of simplex corner `corner` (0..d) of every point."""
    d = rem0_NxD1.shape[1] - 1
    return [rem0_NxD1[:, i] + corner - (d + 1) * (rank_NxD1[:, i] > d - corner).astype(jnp.int32)
            for i in range(d + 1)]


def floor_div(x, divisor):
    """floor(x / divisor) for int32 |x| < 2^20 and a positive constant divisor, via float32.

    Exact: x + 0.5 keeps the quotient at least 1 / (2 divisor) from an integer. XLA CPU would emit
    a scalar integer division per element (10x slower here).
    """
    quotient = (x.astype(jnp.float32) + np.float32(0.5)) * np.float32(1.0 / divisor)
    return jnp.floor(quotient).astype(jnp.int32)


class KeyLayout:
    """Static packing of lattice points into non-negative int64 keys (see the module docstring).

    Digit order, most significant first: `digit_order` (default: the colour digits a_d..a_3, then
    y, x), residue last. Keys sort in that order, which fixes the vertex numbering: with colour
    first, a lattice neighbour's row is a near-constant distance away (the blur's gathers stream).

    Args:
      d: feature dimension.
      feature_max: static upper bounds of the (non-negative) features.
    """

    def __init__(self, d, feature_max, digit_order=None):
        if len(feature_max) != d:
            raise ValueError(f"feature_max has {len(feature_max)} entries for {d} features")
        self.d = d
        scale = lattice_scales(d)
        spread, step = _offset_bounds(d)
        self.low = {}
        widths = {}
        for j in range(1, d + 1):
            # T_j - c_j over the features' box, widened by the corner offsets and a blur step.
            span = j * scale[j - 1] * float(feature_max[j - 1])
            slack = 1e-3 * (1.0 + span)  # float32 features may exceed their bound by an ulp
            low = -spread[j] - step[j] - slack
            high = span + spread[j] + step[j] + slack
            self.low[j] = math.floor(-high / (d + 1)) - 1
            top = math.ceil(-low / (d + 1)) + 1
            widths[j] = max(1, int(math.ceil(math.log2(top - self.low[j] + 1))))
        widths[0] = max(1, int(math.ceil(math.log2(d + 1))))  # the residue r
        order = list(digit_order) if digit_order else list(range(d, 0, -1))
        order.append(0)
        self.shift = {}
        bits = 0
        for digit in reversed(order):
            self.shift[digit] = bits
            bits += widths[digit]
        self.width = widths
        self.bits = bits

    def encode(self, coords):
        """int64 keys [L] of lattice points given as d+1 int32 coordinate arrays [L] (x64 on)."""
        d = self.d
        digits = self._digits(coords)
        key = None
        for digit, value in digits.items():
            term = jnp.left_shift(value.astype(jnp.int64), np.int64(self.shift[digit]))
            key = term if key is None else key | term
        return key

    def decode(self, keys):
        """The d+1 int32 coordinate arrays of int64 keys (x64 on)."""
        d = self.d
        digits = {digit: (jnp.right_shift(keys, np.int64(shift))
                          & np.int64((1 << self.width[digit]) - 1)).astype(jnp.int32)
                  for digit, shift in self.shift.items()}
        residue = digits[0]
        coords = [None] * (d + 1)
        total = None
        for j in range(d, 0, -1):
            floor_t = 0 if total is None else floor_div(-total, (d + 1) * (j + 1))
            coords[j] = (d + 1) * (digits[j] + self.low[j] + floor_t) + residue
            total = coords[j] if total is None else total + coords[j]
        coords[0] = -total
        return coords

    def digits_in_range(self, coords):
        """True where every digit of the points fits its field (a check for tests)."""
        ok = None
        for digit, value in self._digits(coords).items():
            fits = (value >= 0) & (value < (1 << self.width[digit]))
            ok = fits if ok is None else ok & fits
        return ok

    def _digits(self, coords):
        d = self.d
        residue = coords[d] - (d + 1) * floor_div(coords[d], d + 1)
        digits = {0: residue}
        total = None
        for j in range(d, 0, -1):
            floor_t = 0 if total is None else floor_div(-total, (d + 1) * (j + 1))
            digits[j] = floor_div(coords[j] - residue, d + 1) - floor_t - self.low[j]
            total = coords[j] if total is None else total + coords[j]
        return digits


def _offset_bounds(d):
    """Per digit j = 1..d, bounds on how far T_j - c_j of a simplex corner, and of a blur
    neighbour query, strays from the elevated point's value: (spread, step) dicts.

    L_j(c) = -(c_{j+1} + ... + c_d)/(j+1) - c_j is linear; the point is a convex combination of
    its corners, so a corner's L_j is within max - min of L_j over the corners (maximised over all
    (d+1)! simplex orientations); a blur step (d on one coordinate, -1 on the others) adds L_j of
    at most max |L_j| over the steps (either sign).
    """
    if d > 7:
        raise ValueError(f"lattice keys support up to 7 feature dimensions, got {d}")

    def l_j(j, points):
        return -points[..., j + 1:].sum(-1) / (j + 1) - points[..., j]

    spread, step = {}, {}
    corner = np.arange(d + 1)
    for j in range(1, d + 1):
        worst = 0.0
        for ranks in itertools.permutations(range(d + 1)):
            wraps = np.asarray(ranks)[None, :] > (d - corner)[:, None]
            corners = corner[:, None] - (d + 1) * wraps
            values = l_j(j, corners.astype(np.float64))
            worst = max(worst, float(values.max() - values.min()))
        steps = -np.ones((d + 1, d + 1)) + (d + 1) * np.eye(d + 1)
        spread[j], step[j] = worst, float(np.abs(l_j(j, steps)).max())
    return spread, step
