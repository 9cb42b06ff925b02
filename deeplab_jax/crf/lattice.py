"""The permutohedral lattice of Adams et al. (2010) in pure JAX, with static shapes.

This is the bilateral filter of the jitted mean-field CRF (`deeplab_jax.crf.meanfield`). It builds
the same lattice as Krähenbühl's C++ code (and `deeplab_jax.crf.permutohedral`): same elevation,
rounding, ranking and barycentric weights in float32, same d+1 blur directions with the
[1/2, 1, 1/2] kernel, same alpha. Where the C++ code uses a hash table, this uses a sort, so that
every shape is static:

* the N (d+1) vertex keys (d small integers each) are packed into a few int32 words whose layout is
  fixed at trace time from the feature bounds (image size and standard deviations);
* one lexicographic `lax.sort` groups equal keys; a cumulative sum numbers the distinct vertices;
* the distinct keys go into a table of static `capacity` rows (padding rows hold a sentinel larger
  than any key, so the table stays sorted); a neighbour along lattice direction j has the key
  (k - 1, ..., k + d at j, ..., k - 1), found by a vectorised binary search in the table.

Vertex buffers have capacity + 1 rows; the last row is a permanent zero that stands for "no vertex"
(absent blur neighbours, and vertices beyond the capacity). When an image needs more vertices than
`capacity` the surplus is dropped and `Lattice.num_vertices > capacity` reports it; the public
`dense_crf` then recomputes with a larger capacity.

Per mean-field iteration a filter costs d+1 scatter-adds of N rows (splat), 2 (d+1) gathers of
capacity rows (blur) and d+1 gathers of N rows (slice).
"""

import math
import typing

import jax
import jax.numpy as jnp
import numpy as np

# Keep every packed word below the sentinel (padding rows of the sorted key table).
_WORD_BITS = 30
_SENTINEL = np.int32(2**31 - 1)


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


def build(features_Nxd, feature_max, capacity):
    """Builds the lattice for non-negative float32 features bounded by `feature_max` (static)."""
    num_points, d = features_Nxd.shape
    if len(feature_max) != d:
        raise ValueError(f"feature_max has {len(feature_max)} entries for {d} features")
    layout = _KeyLayout(d, feature_max)
    keys_NxD1xD, weights_NxD1 = _simplex_corners(features_Nxd)
    words = layout.pack(keys_NxD1xD.reshape(-1, d))  # tuple of [N (d+1)] int32
    pair_index = jnp.arange(num_points * (d + 1), dtype=jnp.int32)
    *sorted_words, order = jax.lax.sort((*words, pair_index), num_keys=len(words))
    is_new = jnp.zeros(pair_index.shape, bool).at[0].set(True)
    for word in sorted_words:
        is_new = is_new.at[1:].set(is_new[1:] | (word[1:] != word[:-1]))
    vertex_of_sorted = jnp.cumsum(is_new.astype(jnp.int32)) - 1
    num_vertices = vertex_of_sorted[-1] + 1
    # Vertex ids in the original (point, corner) order; surplus vertices become "none" (= C).
    vertex_ids = jnp.zeros_like(pair_index).at[order].set(vertex_of_sorted, unique_indices=True)
    vertex_ids = jnp.where(vertex_ids < capacity, vertex_ids, capacity).reshape(num_points, d + 1)
    table = tuple(
        jnp.full((capacity,), _SENTINEL, jnp.int32).at[vertex_of_sorted].set(word, mode="drop")
        for word in sorted_words)
    valid = jnp.arange(capacity) < num_vertices
    neighbours = []
    for direction in range(d + 1):
        query = layout.shift(table, direction)
        minus = jnp.where(valid, _lookup(table, query), capacity)
        # Along one direction, "plus" is the inverse of "minus".
        # (Slot C collects the vertices without a minus neighbour and is cut off.)
        plus = jnp.full((capacity + 1,), capacity, jnp.int32).at[minus].set(
            jnp.arange(capacity, dtype=jnp.int32))[:capacity]
        neighbours.append(jnp.stack([minus, plus]))
    pad = jnp.full((d + 1, 2, 1), capacity, jnp.int32)
    neighbours = jnp.concatenate([jnp.stack(neighbours), pad], axis=2)
    return Lattice(
        vertex_ids=jax.lax.stop_gradient(vertex_ids),
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


def _simplex_corners(features_Nxd):
    """Keys [N, d+1, d] (int32) and barycentric weights [N, d+1] of each point's simplex.

    Float32 operation order follows the reference's SSE path so that the simplices agree.
    """
    num_points, d = features_Nxd.shape
    features_Nxd = features_Nxd.astype(jnp.float32)
    inv_std_dev = np.float32(np.sqrt(2.0 / 3.0) * (d + 1))
    scale = (1.0 / np.sqrt((np.arange(d) + 2.0) * (np.arange(d) + 1.0))
             * np.float64(inv_std_dev)).astype(np.float32)
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
    rem0_int = rem0[:, :d].astype(jnp.int32)
    corner = jnp.arange(d + 1, dtype=jnp.int32)
    wraps = rank[:, None, :d] > (d - corner)[None, :, None]
    keys = rem0_int[:, None, :] + corner[None, :, None] - (d + 1) * wraps.astype(jnp.int32)
    return keys, weights


class _KeyLayout:
    """Static packing of d lattice coordinates into int32 words (mixed radix within a word).

    Coordinate bounds come from the feature bounds, widened by the simplex corners (d+1) and the
    blur neighbours (d), so every key and every neighbour query packs without overflow, and a
    neighbour step is a constant addition to each word.
    """

    def __init__(self, d, feature_max):
        inv_std_dev = np.sqrt(2.0 / 3.0) * (d + 1)
        scale = 1.0 / np.sqrt((np.arange(d) + 2.0) * (np.arange(d) + 1.0)) * inv_std_dev
        scaled_max = np.asarray(feature_max, np.float64) * scale
        low = np.empty(d + 1)
        high = np.empty(d + 1)
        for j in range(d + 1):
            high[j] = scaled_max[j:].sum()
            low[j] = -j * scaled_max[j - 1] if j > 0 else 0.0
        margin = 4 * (d + 1)
        self.low = np.floor(low[:d]).astype(np.int64) - margin
        spans = np.ceil(high[:d]).astype(np.int64) + margin - self.low + 1
        self.d = d
        # Greedy packing, most significant coordinate (d-1) first.
        self.words = []  # list of lists of (coordinate, radix)
        current, bits = [], 0.0
        for coordinate in range(d - 1, -1, -1):
            need = math.log2(spans[coordinate])
            if need > _WORD_BITS:
                raise ValueError(
                    "a lattice coordinate spans more than 2^30 values; a standard deviation is "
                    "too small for the image size")
            if bits + need > _WORD_BITS:
                self.words.append(current)
                current, bits = [], 0.0
            current.append(coordinate)
            bits += need
        self.words.append(current)
        self.radix = {}
        for word in self.words:
            radix = 1
            for coordinate in reversed(word):  # least significant last in the list
                self.radix[coordinate] = radix
                radix *= int(spans[coordinate])

    def pack(self, keys_Lxd):
        out = []
        for word in self.words:
            value = None
            for coordinate in word:
                offset = keys_Lxd[:, coordinate] - int(self.low[coordinate])
                term = offset * self.radix[coordinate]
                value = term if value is None else value + term
            out.append(value.astype(jnp.int32))
        return tuple(out)

    def shift(self, table_words, direction):
        """Words of the 'minus' neighbour along `direction`: -1 on every coordinate, +d on it."""
        d = self.d
        out = []
        for word, values in zip(self.words, table_words):
            step = 0
            for coordinate in word:
                delta = d if coordinate == direction else -1
                step += delta * self.radix[coordinate]
            out.append(jnp.where(values == _SENTINEL, values, values + np.int32(step)))
        return tuple(out)


def _lookup(table_words, query_words):
    """Row of each query in the sorted key table (lexicographic), or C (= no such vertex)."""
    capacity = table_words[0].shape[0]
    num_steps = max(1, int(math.ceil(math.log2(capacity + 1))))

    def less(a_words, b_words):  # lexicographic a < b
        result = jnp.zeros(a_words[0].shape, bool)
        equal_so_far = jnp.ones(a_words[0].shape, bool)
        for a, b in zip(a_words, b_words):
            result = result | (equal_so_far & (a < b))
            equal_so_far = equal_so_far & (a == b)
        return result

    def step(_, bounds):
        low, high = bounds
        mid = (low + high) // 2
        mid_words = tuple(w.at[jnp.minimum(mid, capacity - 1)].get(mode="promise_in_bounds")
                          for w in table_words)
        go_right = less(mid_words, query_words) & (low < high)
        return jnp.where(go_right, mid + 1, low), jnp.where(go_right | (low >= high), high, mid)

    low = jnp.zeros(query_words[0].shape, jnp.int32)
    high = jnp.full(query_words[0].shape, capacity, jnp.int32)
    low, _ = jax.lax.fori_loop(0, num_steps, step, (low, high))
    found_words = tuple(w.at[jnp.minimum(low, capacity - 1)].get(mode="promise_in_bounds")
                        for w in table_words)
    found = low < capacity
    for a, b in zip(found_words, query_words):
        found = found & (a == b)
    return jnp.where(found, low, capacity).astype(jnp.int32)
