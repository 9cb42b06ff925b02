"""Exact host dense CRF: the permutohedral lattice of Adams et al. (2010) in numpy/scipy.

This reproduces, operation for operation, the model of Krähenbühl's C++ code (the 2013 release that
pydensecrf / pydensecrf2 wrap; DeepLab-v2 paper §3.3), which the DeepLab papers use for their CRF:

* Features (DenseCRF2D): Gaussian kernel (x/pos_xy_std, y/pos_xy_std), bilateral kernel
  (x/bi_xy_std, y/bi_xy_std, r/bi_rgb_std, g/bi_rgb_std, b/bi_rgb_std); x is the column, y the row,
  colours are raw 0..255 values; all in float32.
* Lattice: features are scaled by sqrt(2/3) (d+1) / sqrt((i+1)(i+2)) and elevated onto the plane
  sum = 0 in d+1 dimensions, the enclosing simplex is found by rounding to the nearest multiple of
  d+1 (round half to even, as the SSE build does) and ranking the remainders; each point splats onto
  the d+1 simplex vertices with its barycentric weights.
* Blur: one pass per lattice direction j = 0..d, v <- v + (v[n1] + v[n2]) / 2 (the [1/2, 1, 1/2]
  kernel, unnormalised; absent neighbours count as 0).
* Slice: barycentric interpolation times alpha = 1 / (1 + 2^-d). The pixel's own contribution is
  *not* removed (the 2013 code keeps it, unlike the 2011 release).
* Normalisation (NORMALIZE_SYMMETRIC, pydensecrf's default): n = 1 / sqrt(filter(1) + 1e-20),
  message = n * filter(n * Q).
* Inference: U = -log(clip(p, 1e-5, 1)), Q = softmax(-U); each iteration
  Q = softmax(-U + sum_k w_k message_k) (Potts compatibility contributes -w_k * message_k to the
  energy). Gaussian kernel first, then bilateral, as DeepLab adds them.

Splat and slice are one sparse matrix (vertices x pixels) with the symmetric normalisation folded
in, so an iteration costs two sparse-dense products and 2 (d+1) row gathers per kernel.
"""

import concurrent.futures
import functools
import os

import numpy as np
import scipy.sparse

from deeplab_jax.crf.params import CRFParams

UNARY_CLIP = 1e-5  # p is clipped to [1e-5, 1] before -log, as pydensecrf.utils.unary_from_softmax.


class PermutohedralLattice:
    """The lattice for one feature set; `filter` applies splat -> blur -> slice (times alpha).

    Vertex arrays have M+1 rows: row M is a permanent zero standing for "no vertex" (absent blur
    neighbours), as the C++ code's extra zero entry.

    Args:
      features_Nxd: float32 feature vectors, already divided by the standard deviations.
    """

    def __init__(self, features_Nxd):
        features_Nxd = np.ascontiguousarray(features_Nxd, dtype=np.float32)
        if features_Nxd.ndim != 2 or features_Nxd.shape[1] < 1:
            raise ValueError(f"features must be [N, d] with d >= 1, got shape {features_Nxd.shape}")
        self.num_points, self.dim = features_Nxd.shape
        d = self.dim
        codes_NxD1, weight_NxD1, codec = _enclosing_simplices(features_Nxd)
        # Distinct vertices (a hash table's job in C++). Splat and slice number them in order of
        # first use by the row-major points, as the C++ hash table does (neighbouring pixels then
        # touch nearby rows: 2-3x faster); the blur runs in key order, where a lattice neighbour
        # is a constant key offset away (near-sequential access), with a row permutation each side.
        sorted_codes, first_use_M, sorted_id_N_D1 = np.unique(
            codes_NxD1.ravel(), return_index=True, return_inverse=True)
        del codes_NxD1
        num_vertices = self.num_vertices = sorted_codes.shape[0]
        self._key_order_of_stored = np.append(np.argsort(first_use_M).astype(np.int32),
                                              np.int32(num_vertices))
        self._stored_of_key_order = np.empty(num_vertices + 1, np.int32)
        self._stored_of_key_order[self._key_order_of_stored] = np.arange(
            num_vertices + 1, dtype=np.int32)
        vertex_N_D1 = self._stored_of_key_order[sorted_id_N_D1]
        del sorted_id_N_D1, first_use_M
        # Splat matrix ((M+1) x points; row M empty): column i holds point i's d+1 weights.
        self.splat_MxN = scipy.sparse.csc_matrix(
            (weight_NxD1.ravel(), vertex_N_D1,
             np.arange(0, self.num_points * (d + 1) + 1, d + 1, dtype=np.int32)),
            shape=(num_vertices + 1, self.num_points))
        self.blur_neighbours = _blur_neighbours(codec, sorted_codes, d)
        self.alpha = np.float32(1.0 / (1.0 + 2.0 ** (-d)))

    def blur(self, values_MxK):
        """The d+1 directional [1/2, 1, 1/2] passes, j = 0..d, on [M+1, K] (stored row order)."""
        values = np.take(values_MxK, self._stored_of_key_order, axis=0)
        for minus_M, plus_M in self.blur_neighbours:
            blurred = np.take(values, minus_M, axis=0)
            blurred += np.take(values, plus_M, axis=0)
            blurred *= np.float32(0.5)
            blurred += values
            values = blurred
        return np.take(values, self._key_order_of_stored, axis=0)

    def filter(self, values_NxK):
        """Splat, blur and slice `values_NxK` (float32); the pixel's own contribution included."""
        values_NxK = np.asarray(values_NxK, np.float32)
        splatted_MxK = self.splat_MxN @ values_NxK
        return (self.splat_MxN.T @ self.blur(splatted_MxK)) * self.alpha


class NormalizedKernel:
    """A Potts pairwise term with symmetric normalisation: message = n * filter(n * Q).

    n = 1/sqrt(filter(1) + 1e-20) (NORMALIZE_SYMMETRIC) and alpha are folded into the splat weights
    as sqrt(alpha) n_i w_ij, and the slice is the transpose of the same matrix (one weight array):
    an application is one splat, d+1 blurs and one slice.
    """

    def __init__(self, features_Nxd):
        self.lattice = PermutohedralLattice(features_Nxd)
        ones_Nx1 = np.ones((self.lattice.num_points, 1), np.float32)
        norm_N = (1.0 / np.sqrt(self.lattice.filter(ones_Nx1)[:, 0] + 1e-20)).astype(np.float32)
        self.norm_N = norm_N
        # Scale the weights in place; the lattice is this kernel's from now on (its own `filter`
        # would no longer be the plain lattice filter).
        splat = self.lattice.splat_MxN
        splat.data *= np.repeat(norm_N * np.sqrt(self.lattice.alpha), np.diff(splat.indptr))
        self._splat_MxN = splat
        self._slice_NxM = splat.T  # a CSR view of the same arrays
        self.lattice.splat_MxN = None

    def message(self, q_NxK):
        """n * filter(n * q) for a float32 block of channels [N, K']."""
        return self._slice_NxM @ self.lattice.blur(self._splat_MxN @ q_NxK)


def gaussian_features(height, width, xy_std):
    """(x/std, y/std) per pixel in row-major order, computed in float32 like DenseCRF2D."""
    xs = np.arange(width, dtype=np.float32) / np.float32(xy_std)
    ys = np.arange(height, dtype=np.float32) / np.float32(xy_std)
    features = np.empty((height, width, 2), np.float32)
    features[..., 0] = xs[None, :]
    features[..., 1] = ys[:, None]
    return features.reshape(-1, 2)


def bilateral_features(image_HxWx3, xy_std, rgb_std):
    """(x/xy_std, y/xy_std, r/rgb_std, g/rgb_std, b/rgb_std) per pixel, float32, row-major."""
    height, width, _ = image_HxWx3.shape
    features = np.empty((height, width, 5), np.float32)
    features[..., :2] = gaussian_features(height, width, xy_std).reshape(height, width, 2)
    features[..., 2:] = image_HxWx3.astype(np.float32) / np.float32(rgb_std)
    return features.reshape(-1, 5)


def dense_crf_single(image_HxWx3, probs_HxWxK, params: CRFParams, num_threads=None):
    """Mean-field inference for one image on the host; returns Q [H, W, K] float32.

    Inputs are assumed validated (see `deeplab_jax.crf.api.dense_crf`). The classes are split into
    `num_threads` groups, each kept as its own contiguous [N, K_g] array and filtered concurrently
    (numpy and scipy.sparse release the GIL); default: the CPUs available to the process, max 8.
    """
    height, width, num_classes = probs_HxWxK.shape
    num_pixels = height * width
    probs_NxK = np.asarray(probs_HxWxK, np.float32).reshape(num_pixels, num_classes)
    if params.iterations == 0:
        neg_unary_NxK = np.log(np.clip(probs_NxK, np.float32(UNARY_CLIP), np.float32(1.0)))
        return _softmax_rows(neg_unary_NxK).reshape(height, width, num_classes)
    num_threads = _default_threads() if num_threads is None else max(1, int(num_threads))
    pool = _thread_pool(num_threads)
    # Built one after the other, before the per-pixel arrays exist: lower peak memory.
    gaussian = _gaussian_kernel(height, width, float(params.pos_xy_std))
    bilateral = NormalizedKernel(bilateral_features(np.asarray(image_HxWx3), params.bi_xy_std,
                                                    params.bi_rgb_std))
    pos_w, bi_w = np.float32(params.pos_w), np.float32(params.bi_w)
    # Q sums to 1 over classes, so the last class's message is message(1) minus the others'.
    ones_Nx1 = np.ones((num_pixels, 1), np.float32)
    total_of_ones_N = (pos_w * gaussian.message(ones_Nx1)
                       + bi_w * bilateral.message(ones_Nx1))[:, 0]
    # Since Q <= 1, every energy is below this per-pixel bound; subtracting it (exact for a
    # softmax) replaces the slow per-row max and keeps exp() from overflowing.
    bound_N = total_of_ones_N
    filtered = num_classes - 1
    bounds = np.linspace(0, filtered, min(num_threads, filtered) + 1).round().astype(int)
    groups = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    neg_unary_NxK = np.log(np.clip(probs_NxK, np.float32(UNARY_CLIP), np.float32(1.0)))
    q_groups = [np.ascontiguousarray(q) for q in
                np.split(_softmax_rows(neg_unary_NxK)[:, :filtered], bounds[1:-1], axis=1)]
    neg_unary_NxK -= bound_N[:, None]
    neg_unary_groups = [np.ascontiguousarray(neg_unary_NxK[:, a:b]) for a, b in groups]
    neg_unary_last_N = neg_unary_NxK[:, filtered].copy()
    del neg_unary_NxK

    def exp_energy(g):
        """exp(energy - bound) of group g in a new array, and its row sums."""
        q = q_groups[g]
        energy = pos_w * gaussian.message(q)
        energy += bi_w * bilateral.message(q)
        # Row sums with einsum, not a matmul: BLAS would start its own spinning threads.
        messages_N = np.einsum("nk->n", energy)
        energy += neg_unary_groups[g]
        np.exp(energy, out=energy)
        return energy, np.einsum("nk->n", energy), messages_N

    run = (lambda f, items: list(pool.map(f, items))) if pool else (
        lambda f, items: [f(i) for i in items])
    for _ in range(params.iterations):
        results = run(exp_energy, range(len(groups)))
        last_N = np.exp(neg_unary_last_N + total_of_ones_N - sum(r[2] for r in results))
        q_groups = None  # the old Q is no longer needed
        inverse_N = 1.0 / (sum(r[1] for r in results) + last_N)
        if not np.all(np.isfinite(inverse_N)):
            raise FloatingPointError("mean-field normalisation underflowed; report this input")
        q_last_N = last_N * inverse_N
        q_groups = run(lambda r: np.multiply(r[0], inverse_N[:, None], out=r[0]), results)
    q_NxK = np.empty((num_pixels, num_classes), np.float32)
    for (a, b), q in zip(groups, q_groups):
        q_NxK[:, a:b] = q
    q_NxK[:, filtered] = q_last_N
    return q_NxK.reshape(height, width, num_classes)


@functools.lru_cache(maxsize=4)
def _gaussian_kernel(height, width, xy_std):
    """The spatial kernel's lattice depends only on the image size: built once per size."""
    return NormalizedKernel(gaussian_features(height, width, xy_std))


_POOLS = {}


def _thread_pool(num_threads):
    if num_threads <= 1:
        return None
    if num_threads not in _POOLS:
        _POOLS[num_threads] = concurrent.futures.ThreadPoolExecutor(
            num_threads, thread_name_prefix="dense_crf")
    return _POOLS[num_threads]


def _default_threads():
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count() or 1
    return max(1, min(available, 8))


def _softmax_rows(x_NxK):
    out = x_NxK - x_NxK.max(axis=1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


def _enclosing_simplices(features_Nxd):
    """Per point: the keys (packed to int64) and barycentric weights of its simplex's d+1 vertices.

    Follows Adams et al. (2010) §3-4 in the float32 arithmetic of Krähenbühl's SSE code path, so
    that the same points fall into the same simplices (ties and rounding included).
    """
    num_points, d = features_Nxd.shape
    inv_std_dev = np.float32(np.sqrt(2.0 / 3.0) * (d + 1))
    scale = (1.0 / np.sqrt((np.arange(d) + 2.0) * (np.arange(d) + 1.0))
             * np.float64(inv_std_dev)).astype(np.float32)
    # Elevate onto the hyperplane sum(x) = 0 in d+1 dimensions (the matrix E of the paper).
    elevated_NxD1 = np.empty((num_points, d + 1), np.float32)
    running_sum_N = np.zeros(num_points, np.float32)
    for j in range(d, 0, -1):
        scaled_N = features_Nxd[:, j - 1] * scale[j - 1]
        elevated_NxD1[:, j] = running_sum_N - np.float32(j) * scaled_N
        running_sum_N += scaled_N
    elevated_NxD1[:, 0] = running_sum_N
    # Nearest remainder-0 point: round each coordinate to a multiple of d+1 (half to even).
    down = np.float32(1.0) / np.float32(d + 1)
    rounded_NxD1 = np.rint(elevated_NxD1 * down)
    rem0_NxD1 = rounded_NxD1 * np.float32(d + 1)
    coord_sum_N = rounded_NxD1.sum(axis=1).astype(np.int16)
    # Rank of each remainder among the d+1 (ties resolved exactly as in the reference's pair loop).
    residual_NxD1 = elevated_NxD1 - rem0_NxD1
    rank_NxD1 = np.zeros((num_points, d + 1), np.int16)
    for i in range(d):
        for j in range(i + 1, d + 1):
            i_below_j = residual_NxD1[:, i] < residual_NxD1[:, j]
            rank_NxD1[:, i] += i_below_j
            rank_NxD1[:, j] += ~i_below_j
    # Bring the point back onto the plane when the rounded coordinates do not sum to zero.
    rank_NxD1 += coord_sum_N[:, None]
    shift_NxD1 = (np.int16(d + 1) * ((rank_NxD1 < 0).astype(np.int16)
                                     - (rank_NxD1 > d).astype(np.int16)))
    rank_NxD1 += shift_NxD1
    rem0_NxD1 += shift_NxD1.astype(np.float32)
    # Barycentric weights: slot d - rank gets +v and slot d - rank + 1 gets -v, i.e. with v listed
    # by rank, weight[q] = v[rank d-q] - v[rank d-q+1]; slot d+1 wraps around onto slot 0.
    value_NxD1 = (elevated_NxD1 - rem0_NxD1) * down
    del elevated_NxD1, residual_NxD1
    value_by_rank_NxD1 = np.empty_like(value_NxD1)
    np.put_along_axis(value_by_rank_NxD1, rank_NxD1.astype(np.intp), value_NxD1, axis=1)
    descending_NxD1 = value_by_rank_NxD1[:, ::-1]
    weight_NxD1 = np.empty((num_points, d + 1), np.float32)
    weight_NxD1[:, 1:] = descending_NxD1[:, 1:] - descending_NxD1[:, :-1]
    weight_NxD1[:, 0] = descending_NxD1[:, 0] + (np.float32(1.0) - value_by_rank_NxD1[:, 0])
    # Vertex r of the simplex: rem0 + r on every coordinate, minus d+1 where rank > d - r. Keys keep
    # the first d coordinates (the last is implied by sum = 0) and pack linearly into int64.
    rem0_int_NxD = rem0_NxD1[:, :d].astype(np.int64)
    codec = _KeyCodec(rem0_int_NxD.min(axis=0) - 2 * (d + 1),
                      rem0_int_NxD.max(axis=0) + 2 * (d + 1))
    base_N = codec.encode(rem0_int_NxD)
    del rem0_int_NxD
    codes_NxD1 = np.empty((num_points, d + 1), np.int64)
    rank_radix_NxD = rank_NxD1[:, :d]
    for r in range(d + 1):
        wrapped_N = (rank_radix_NxD > d - r).astype(np.int64) @ codec.radix
        codes_NxD1[:, r] = base_N + r * codec.radix.sum() - (d + 1) * wrapped_N
    return codes_NxD1, weight_NxD1, codec


def _blur_neighbours(codec, sorted_codes, d):
    """For directions j = 0..d: the (minus, plus) neighbour of each vertex in key order, M = none.

    Moving along lattice direction j adds d to coordinate j and subtracts 1 from the others (for
    j = d the changed coordinate is the implied last one); with the linear key packing that is a
    constant offset of the code, so the neighbours' codes are sorted queries for a binary search.
    Absent neighbours read the zero row M, as the C++ code reads a zero vertex.
    """
    num_vertices = sorted_codes.shape[0]
    ids_M1 = np.arange(num_vertices + 1, dtype=np.int32)
    neighbours = []
    for j in range(d + 1):
        step = -int(codec.radix.sum()) + ((d + 1) * int(codec.radix[j]) if j < d else 0)
        minus = _lookup(sorted_codes, sorted_codes + step)
        minus = np.append(np.where(minus >= 0, minus, num_vertices), num_vertices).astype(np.int32)
        # The neighbour in the opposite direction is the inverse relation (slot M absorbs "none").
        plus = np.full(num_vertices + 1, num_vertices, np.int32)
        plus[minus[:-1]] = ids_M1[:-1]
        plus[num_vertices] = num_vertices
        neighbours.append((minus, plus))
    return neighbours


def _lookup(sorted_codes, codes):
    """Positions of `codes` in `sorted_codes`, -1 where absent."""
    index = np.searchsorted(sorted_codes, codes)
    index_clipped = np.minimum(index, len(sorted_codes) - 1)
    found = sorted_codes[index_clipped] == codes
    return np.where(found, index_clipped, -1).astype(np.int32)


class _KeyCodec:
    """Packs integer keys with coordinates in [low, high] into int64, linearly (mixed radix)."""

    def __init__(self, low_d, high_d):
        spans = (high_d - low_d + 1).astype(np.int64)
        if np.sum(np.log2(spans.astype(np.float64))) >= 62:
            raise ValueError(
                "the lattice keys span too large a range to pack into 64 bits; the features are "
                "too spread out (is a standard deviation tiny?)")
        self.low = low_d.astype(np.int64)
        self.radix = np.cumprod(np.concatenate([[1], spans[:-1]])).astype(np.int64)

    def encode(self, keys_Lxd):
        return (keys_Lxd - self.low) @ self.radix
