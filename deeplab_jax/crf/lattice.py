"""The permutohedral lattice of Adams et al. (2010) in pure JAX, with static shapes.

This is the bilateral filter of the jitted mean-field CRF (`deeplab_jax.crf.meanfield`, DeepLab-v2
§3.3). It builds the same lattice as Krähenbühl's C++ code (and `deeplab_jax.crf.permutohedral`):
same elevation, rounding, ranking and barycentric weights in float32, same d+1 blur directions with
the [1/2, 1, 1/2] kernel, same alpha. Where the C++ code uses a hash table, this sorts:

* every simplex corner gets one int64 key (`deeplab_jax.crf.lattice_keys`: ~28 bits at VOC size);
* the key and the corner's index are packed into one int64 and sorted once. A single-operand
  integer sort is what XLA CPU does fast (0.15 s for 1.1M values where a key + payload sort takes
  0.9 s and a two-word key sort 1.2 s, measured); the packed low bits give the permutation, so
  each corner's vertex number comes back with one scatter, without any search;
* the distinct keys (vertex numbers in key order) fill a table of static `capacity` rows; a blur
  neighbour's key is found by a bucketed binary search (a directory over the keys' top bits leaves
  a few steps); the opposite neighbour is the inverse relation.

Vertex buffers have capacity + 1 rows; the last row is a permanent zero that stands for "no vertex"
(absent blur neighbours, and vertices beyond the capacity). When an image needs more vertices than
`capacity`, the surplus (the largest keys) is dropped and `Lattice.num_vertices > capacity`
reports it; the public `dense_crf` then recomputes with a larger capacity.

The build runs with 64-bit integers enabled locally (`jax.enable_x64`); nothing 64-bit leaves it.
Per mean-field iteration a filter costs d+1 scatter-adds of N rows (splat), 2 (d+1) gathers of
capacity rows (blur) and d+1 gathers of N rows (slice).
"""

import math
import typing

import jax
import jax.numpy as jnp
import numpy as np

from deeplab_jax.crf import lattice_keys

_KEY_SENTINEL = np.int64(2**62)  # above every key: padding rows keep the table sorted


class Lattice(typing.NamedTuple):
    """A built lattice; all arrays have static shapes (N points, capacity C, dimension d)."""

    vertex_ids: jax.Array  # [N, d+1] int32: vertex of each simplex corner, C where absent
    weights: jax.Array  # [N, d+1] float32 barycentric weights
    neighbours: jax.Array  # [d+1, 2, C+1] int32: minus/plus neighbour per direction, C = none
    num_vertices: jax.Array  # [] int32: distinct vertices found (may exceed C: overflow)


def feature_bounds(height, width, xy_std, rgb_std=None):
    """Static upper bounds of the (non-negative) features: x, y and optionally r, g, b."""
    bounds = [(width - 1) / xy_std, (height - 1) / xy_std]
    if rgb_std is not None:
        bounds += [255.0 / rgb_std] * 3
    return tuple(float(b) for b in bounds)


def key_layout(num_points, feature_max):
    """The key packing for `num_points` points with these bounds; ValueError if it cannot fit."""
    d = len(feature_max)
    layout = lattice_keys.KeyLayout(d, feature_max)
    entry_bits = _entry_bits(num_points, d)
    if layout.bits + entry_bits > 62:
        raise ValueError(
            f"the lattice keys need {layout.bits} bits (+{entry_bits} for {num_points} points), "
            "more than 62: a standard deviation is too small for the image size (bi_xy_std and "
            "bi_rgb_std of at least ~0.5 fit any image up to 4096x4096)")
    return layout


def build(features_Nxd, feature_max, capacity):
    """Builds the lattice for non-negative float32 features bounded by `feature_max` (static)."""
    num_points, d = features_Nxd.shape
    if len(feature_max) != d:
        raise ValueError(f"feature_max has {len(feature_max)} entries for {d} features")
    layout = key_layout(num_points, feature_max)
    rem0, rank, weights_NxD1 = lattice_keys.simplex(features_Nxd)
    num_entries = num_points * (d + 1)
    entry_bits = _entry_bits(num_points, d)
    with jax.enable_x64(True):
        keys_NxD1 = jnp.stack([layout.encode(lattice_keys.corner_coordinates(rem0, rank, k))
                               for k in range(d + 1)], axis=1)
        entry = jnp.arange(num_entries, dtype=jnp.int64)
        packed = jax.lax.sort(jnp.left_shift(keys_NxD1.reshape(-1), np.int64(entry_bits)) | entry)
        sorted_keys = jnp.right_shift(packed, np.int64(entry_bits))
        order = (packed & np.int64((1 << entry_bits) - 1)).astype(jnp.int32)
        is_new = jnp.concatenate([jnp.ones((1,), bool), sorted_keys[1:] != sorted_keys[:-1]])
        vertex_of_sorted = jnp.cumsum(is_new.astype(jnp.int32), dtype=jnp.int32) - 1
        num_vertices = vertex_of_sorted[-1] + 1
        # Corners in their (point, corner) order; surplus vertices become "none" (= C).
        vertex_ids = jnp.zeros((num_entries,), jnp.int32).at[order].set(
            jnp.minimum(vertex_of_sorted, capacity), unique_indices=True)
        table = jnp.full((capacity,), _KEY_SENTINEL, jnp.int64).at[
            jnp.where(is_new, vertex_of_sorted, capacity)].set(sorted_keys, mode="drop")
        neighbours = _neighbours(layout, table, capacity)
    return Lattice(
        vertex_ids=jax.lax.stop_gradient(vertex_ids.reshape(num_points, d + 1)),
        weights=jax.lax.stop_gradient(weights_NxD1),
        neighbours=jax.lax.stop_gradient(neighbours),
        num_vertices=num_vertices,
    )


def splat(lattice, values_NxK):
    """Accumulates each point's values onto its d+1 vertices: [C+1, K] (last row zero)."""
    capacity = lattice.neighbours.shape[-1] - 1
    grid = jnp.zeros((capacity + 1, values_NxK.shape[1]), values_NxK.dtype)
    # Index C (none) is moved out of range so that the zero row stays zero.
    ids_D1xN = jnp.where(lattice.vertex_ids < capacity, lattice.vertex_ids, capacity + 1).T

    # A loop, not an unrolled sum: XLA would otherwise fuse the corners into one kernel that
    # recomputes its inputs per element (the same holds for the blur's directions; the slice
    # gathers from one fixed array and is fine unrolled).
    def add_corner(grid, corner):
        ids_N, weights_N = corner
        return grid.at[ids_N].add(weights_N[:, None] * values_NxK, mode="drop"), None

    return jax.lax.scan(add_corner, grid, (ids_D1xN, lattice.weights.T))[0]


def blur(lattice, grid_C1xK):
    """The [1/2, 1, 1/2] pass along each of the d+1 lattice directions, in order 0..d."""

    def blur_direction(grid, neighbours_2xC1):
        minus = grid.at[neighbours_2xC1[0]].get(mode="promise_in_bounds")
        plus = grid.at[neighbours_2xC1[1]].get(mode="promise_in_bounds")
        return grid + 0.5 * (minus + plus), None

    return jax.lax.scan(blur_direction, grid_C1xK, lattice.neighbours)[0]


def slice_(lattice, grid_C1xK):
    """Barycentric interpolation of the vertex values at each point, times alpha = 1/(1+2^-d)."""
    d = lattice.weights.shape[1] - 1
    total = None
    for corner in range(d + 1):  # gathers from a fixed array fuse well (no loop needed)
        gathered = grid_C1xK.at[lattice.vertex_ids[:, corner]].get(mode="promise_in_bounds")
        term = lattice.weights[:, corner:corner + 1] * gathered
        total = term if total is None else total + term
    return total * (1.0 / (1.0 + 2.0 ** (-d)))


def filter_(lattice, values_NxK):
    """splat -> blur -> slice: the lattice's approximation of sum_j exp(-|f_i - f_j|^2 / 2) v_j."""
    return slice_(lattice, blur(lattice, splat(lattice, values_NxK)))


def _entry_bits(num_points, d):
    return max(1, int(math.ceil(math.log2(max(2, num_points * (d + 1))))))


def _neighbours(layout, table_C, capacity):
    """[d+1, 2, C+1] int32 minus/plus neighbour rows (C = none) of the sorted key table (x64 on).

    Along direction j the minus neighbour has coordinate j + d and the others - 1; the plus
    neighbour is the inverse relation (slot C collects the vertices without one and is cut off).
    """
    d = layout.d
    valid = table_C != _KEY_SENTINEL
    coords = layout.decode(jnp.where(valid, table_C, 0))
    directory = _Directory(table_C, layout.bits)
    rows = jnp.arange(capacity, dtype=jnp.int32)
    neighbours = []
    for direction in range(d + 1):
        query = layout.encode([c + (d if i == direction else -1) for i, c in enumerate(coords)])
        minus = jnp.where(valid, directory.lookup(query), capacity)
        plus = jnp.full((capacity + 1,), capacity, jnp.int32).at[minus].set(rows)[:capacity]
        neighbours.append(jnp.stack([minus, plus]))
    pad = jnp.full((d + 1, 2, 1), capacity, jnp.int32)
    return jnp.concatenate([jnp.stack(neighbours), pad], axis=2)


class _Directory:
    """Row lookup in a sorted int64 key table: the keys' top bits index a directory of row
    ranges (a bucket histogram's prefix sum; ~2 buckets per row), then a binary search runs for
    as many steps as the fullest bucket needs (a data-dependent trip count: lattice keys cluster,
    ~7 steps at VOC size instead of ~18 for a plain binary search)."""

    def __init__(self, table_C, key_bits):
        self.table = table_C
        capacity = table_C.shape[0]
        directory_bits = min(key_bits, max(1, int(math.ceil(math.log2(capacity))) + 1))
        self.shift = key_bits - directory_bits
        num_buckets = 1 << directory_bits
        # Padding rows (sentinel keys, after every real key) are left out of every bucket.
        bucket = jnp.where(table_C != _KEY_SENTINEL, jnp.right_shift(table_C, np.int64(self.shift)),
                           num_buckets).astype(jnp.int32)
        counts = jnp.zeros((num_buckets,), jnp.int32).at[bucket].add(
            1, mode="drop", indices_are_sorted=True)
        self.starts = jnp.concatenate([jnp.zeros((1,), jnp.int32),
                                       jnp.cumsum(counts, dtype=jnp.int32)])
        self.steps = 32 - jax.lax.clz(jnp.max(counts))  # bit length of the fullest bucket

    def lookup(self, queries):
        """Row of each int64 query key, or C where the table lacks it."""
        capacity = self.table.shape[0]
        # Clipped: queries of padding rows may be garbage (their result is discarded).
        bucket = jnp.clip(jnp.right_shift(queries, np.int64(self.shift)), 0,
                          self.starts.shape[0] - 2).astype(jnp.int32)
        low = self.starts.at[bucket].get(mode="promise_in_bounds")
        high = self.starts.at[bucket + 1].get(mode="promise_in_bounds")
        row = self._lower_bound(queries, low, high, self.steps)
        found = self.table.at[jnp.minimum(row, capacity - 1)].get(mode="promise_in_bounds")
        return jnp.where((row < capacity) & (found == queries), row, capacity).astype(jnp.int32)

    def _lower_bound(self, queries, low, high, steps):
        """First row in [low, high) whose key is >= the query (high if none), by bisection."""
        capacity = self.table.shape[0]

        def step(_, bounds):
            low, high = bounds
            mid = jnp.right_shift(low + high, 1)  # low, high >= 0
            key = self.table.at[jnp.minimum(mid, capacity - 1)].get(mode="promise_in_bounds")
            right = (key < queries) & (low < high)
            return jnp.where(right, mid + 1, low), jnp.where(right | (low >= high), high, mid)

        return jax.lax.fori_loop(0, steps, step, (low, high))[0]
