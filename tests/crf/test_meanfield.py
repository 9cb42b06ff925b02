"""The jitted mean-field CRF: exact pieces, agreement with the exact result, jit/vmap/grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax.crf import CRFParams, DEEPLAB_V2, dense_crf
from deeplab_jax.crf import lattice as lattice_lib
from deeplab_jax.crf import meanfield, permutohedral

from . import (brute_force_crf, cluster_probs, features, gaussian_kernel_matrix, photo,
               softmax)

V1_CORNERS = [CRFParams(bi_w=4.0, bi_xy_std=49.0, bi_rgb_std=3.0, pos_w=3.0, pos_xy_std=3.0),
              CRFParams(bi_w=4.0, bi_xy_std=65.0, bi_rgb_std=5.0, pos_w=3.0, pos_xy_std=3.0)]


@pytest.mark.parametrize("std", [1.0, 3.0])
def test_spatial_filter_is_the_exact_gaussian(std):
    """Truncation at 4 std drops < 3.4e-4 of a tap's weight: relative error measured 6e-6
    (std 1) and 4e-5 (std 2-3); 1e-4 allows float32 sums."""
    height, width = 20, 26
    values = np.random.default_rng(0).random((height, width, 3)).astype(np.float32)
    ys, xs = np.mgrid[:height, :width]
    kernel = gaussian_kernel_matrix(np.stack([xs.ravel(), ys.ravel()], 1) / std)
    exact = (kernel @ values.reshape(-1, 3)).reshape(height, width, 3)
    ours = np.asarray(meanfield.spatial_filter(jnp.asarray(values), std))
    assert np.abs(ours - exact).max() / np.abs(exact).max() < 1e-4


def test_jax_lattice_is_the_host_lattice():
    image = photo("astronaut", 48, 64)
    height, width, _ = image.shape
    params = DEEPLAB_V2
    host = permutohedral.PermutohedralLattice(
        permutohedral.bilateral_features(image, params.bi_xy_std, params.bi_rgb_std))
    build = jax.jit(lambda f: lattice_lib.build(
        f, lattice_lib.feature_bounds(height, width, params.bi_xy_std, params.bi_rgb_std),
        capacity=6 * height * width))  # small images need ~3 vertices per pixel
    lattice = build(meanfield.bilateral_features(jnp.asarray(image), params.bi_xy_std,
                                                 params.bi_rgb_std))
    assert int(lattice.num_vertices) == host.num_vertices
    values = np.random.default_rng(0).random((height * width, 3)).astype(np.float32)
    ours = np.asarray(jax.jit(lattice_lib.filter_)(lattice, jnp.asarray(values)))
    reference = host.filter(values)
    assert np.abs(ours - reference).max() <= 1e-5 * np.abs(reference).max()


def test_lattice_overflow_is_reported_and_dense_crf_retries(monkeypatch):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 48, 3)).astype(np.uint8)  # noise: ~6 vertices per pixel
    probs = softmax(rng.normal(size=(40, 48, 3))).astype(np.float32)
    pixels = 40 * 48
    _, vertices = meanfield.meanfield(image[None], probs[None], DEEPLAB_V2, capacity=pixels)
    assert int(vertices[0]) > pixels
    full, _ = meanfield.meanfield(image[None], probs[None], DEEPLAB_V2, capacity=6 * pixels)
    # Default capacity H*W (as for large images) so that the retry path runs here.
    monkeypatch.setattr(meanfield, "default_capacity", lambda height, width: height * width)
    retried = dense_crf(image, probs, DEEPLAB_V2, capacity=None)
    np.testing.assert_allclose(np.asarray(retried), np.asarray(full[0]), atol=1e-6)
    truncated = dense_crf(image, probs, DEEPLAB_V2, capacity=pixels)  # explicit: no retry
    assert np.abs(np.asarray(truncated) - np.asarray(full[0])).max() > 1e-3


def test_one_iteration_is_the_mean_field_update():
    """Q1 = softmax(-U + w2 n_s G_s(n_s Q0) + w1 n_b G_b(n_b Q0)), Q0 = softmax(-U): computed here
    from brute-force spatial sums and the host lattice filter."""
    image = photo("chelsea", 16, 20)
    probs, _ = cluster_probs(image, 3)
    params = CRFParams(iterations=1, bi_w=5.0, bi_xy_std=20.0, bi_rgb_std=8.0, pos_w=2.0,
                       pos_xy_std=1.5)
    neg_unary = np.log(np.clip(probs.reshape(-1, 3).astype(np.float64), 1e-5, 1.0))
    q0 = softmax(neg_unary)
    gaussian, _ = features(image, params)
    spatial = gaussian_kernel_matrix(gaussian)
    n_s = 1 / np.sqrt(spatial.sum(1))
    lattice = permutohedral.PermutohedralLattice(
        permutohedral.bilateral_features(image, params.bi_xy_std, params.bi_rgb_std))
    n_b = 1 / np.sqrt(lattice.filter(np.ones((q0.shape[0], 1), np.float32))[:, 0] + 1e-20)
    expected = softmax(neg_unary
                       + params.pos_w * n_s[:, None] * (spatial @ (n_s[:, None] * q0))
                       + params.bi_w * n_b[:, None] * lattice.filter(
                           (n_b[:, None] * q0).astype(np.float32)))
    ours = np.asarray(dense_crf(image, probs, params)).reshape(-1, 3)
    np.testing.assert_allclose(ours, expected, atol=2e-5)


@pytest.mark.parametrize("params", [DEEPLAB_V2] + V1_CORNERS, ids=["v2", "v1-49-3", "v1-65-5"])
def test_agrees_with_the_exact_result_on_photographs(params):
    """Issue target: >= 99% labels equal to the exact (permutohedral) result at v2 and v1 values.

    The bilateral lattice is the reference's own; the remaining difference is the spatial kernel,
    exact here and lattice-approximated in the reference (measured 99.7-99.9% at 500x375)."""
    for name in ("astronaut", "chelsea"):
        image = photo(name, 96, 128)
        probs, _ = cluster_probs(image, 6, seed=5)
        ours = np.asarray(dense_crf(image, probs, params))
        exact = dense_crf(image, probs, params, method="permutohedral")
        assert np.mean(ours.argmax(-1) == exact.argmax(-1)) >= 0.99, name
        assert np.mean(exact.argmax(-1) != probs.argmax(-1)) > 0.02, name


def test_agrees_with_brute_force():
    """Against exact Gaussian kernels (no lattice at all): same 97% bound and reason as for the
    host lattice (tests/crf/test_permutohedral.py)."""
    image = photo("astronaut", 24, 32)
    probs, _ = cluster_probs(image, 4)
    params = CRFParams(bi_xy_std=10.0, bi_rgb_std=10.0)
    ours = np.asarray(dense_crf(image, probs, params))
    exact = brute_force_crf(image, probs, params)
    assert np.mean(ours.argmax(-1) == exact.argmax(-1)) >= 0.97


def test_jit_vmap_and_batched_inputs_agree(small_batch):
    images, probs = small_batch
    params = CRFParams(iterations=5)
    single = [np.asarray(dense_crf(i, p, params)) for i, p in zip(images, probs)]
    batched = np.asarray(dense_crf(images, probs, params))
    jitted = np.asarray(jax.jit(lambda i, p: dense_crf(i, p, params))(images[0], probs[0]))
    vmapped = np.asarray(jax.vmap(lambda i, p: dense_crf(i, p, params))(images, probs))
    for result in (batched, vmapped):
        np.testing.assert_allclose(result, np.stack(single), atol=1e-5)
    np.testing.assert_allclose(jitted, single[0], atol=1e-5)
    assert batched.dtype == np.float32 and batched.shape == probs.shape


def test_gradients_match_finite_differences(small_batch):
    image, probs = small_batch[0][0], small_batch[1][0]
    logits = jnp.log(jnp.asarray(probs))
    weights_out = jnp.asarray(np.random.default_rng(2).normal(size=probs.shape), jnp.float32)
    capacity = image.shape[0] * image.shape[1] * 6

    def loss(logits, bi_w, pos_w):
        params = CRFParams(iterations=3, bi_w=bi_w, pos_w=pos_w, bi_xy_std=10.0, bi_rgb_std=10.0)
        q, _ = meanfield.meanfield(jnp.asarray(image)[None], jax.nn.softmax(logits)[None],
                                   params, capacity)
        return jnp.sum(q[0] * weights_out)

    grads = jax.grad(loss, argnums=(0, 1, 2))(logits, 4.0, 3.0)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    f = jax.jit(loss)
    eps = 1e-2
    for argnum, base in ((1, 4.0), (2, 3.0)):
        args = [logits, 4.0, 3.0]
        args[argnum] = base + eps
        plus = f(*args)
        args[argnum] = base - eps
        minus = f(*args)
        numeric = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(grads[argnum], numeric, rtol=2e-2, atol=2e-3)
    for index in [(3, 4, 0), (10, 7, 2), (15, 20, 1)]:
        step = jnp.zeros_like(logits).at[index].set(eps)
        numeric = (f(logits + step, 4.0, 3.0) - f(logits - step, 4.0, 3.0)) / (2 * eps)
        np.testing.assert_allclose(grads[0][index], numeric, rtol=2e-2, atol=2e-3)


def test_gradient_with_respect_to_crf_params_is_a_crf_params(small_batch):
    image, probs = small_batch[0][0], small_batch[1][0]
    grad = jax.grad(lambda p: jnp.sum(dense_crf(image, probs, p)[..., 0]))(
        CRFParams(iterations=2))
    assert isinstance(grad, CRFParams)
    assert np.isfinite(float(grad.bi_w)) and np.isfinite(float(grad.pos_w))
    assert grad.bi_xy_std == 67.0  # static fields are carried, not differentiated


def test_class_chunks_do_not_change_the_result():
    """Large images filter a few classes at a time (memory); 5 classes in chunks of 2 (one padding
    class) must equal all at once."""
    image = photo("coffee", 16, 20)
    probs, _ = cluster_probs(image, 5, seed=4)
    params = CRFParams(iterations=4, bi_xy_std=10.0, bi_rgb_std=10.0)

    def run(chunk):
        prepared = meanfield.prepare(jnp.asarray(image), jnp.asarray(probs), params.bi_xy_std,
                                     params.bi_rgb_std, pos_xy_std=params.pos_xy_std,
                                     capacity=16 * 20 * 6)
        return meanfield.iterate(prepared, params.pos_w, params.bi_w,
                                 pos_xy_std=params.pos_xy_std, iterations=params.iterations,
                                 class_chunk=chunk)

    np.testing.assert_allclose(np.asarray(jax.jit(lambda: run(2))()),
                               np.asarray(jax.jit(lambda: run(None))()), atol=1e-6)
