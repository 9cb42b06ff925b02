"""`dense_crf`: the fully connected CRF of DeepLab (paper §3.3) on one image or a batch.

Two methods compute the same model (Krähenbühl & Koltun 2011, as in their C++ code):

* "meanfield" (default): pure JAX (`deeplab_jax.crf.meanfield`), jitted, runs on the default device,
  differentiable with respect to the probabilities and the weights; returns a `jax.Array`.
* "permutohedral": exact host implementation in numpy/scipy (`deeplab_jax.crf.permutohedral`);
  returns a numpy array, or, when called on traced values inside `jax.jit`/`jax.vmap`, goes through
  `jax.pure_callback` (no gradients).

This module imports JAX only when it is needed, so the host path works without it.
"""

import sys

import numpy as np

from deeplab_jax.crf import permutohedral
from deeplab_jax.crf.params import CRFParams

METHODS = ("meanfield", "permutohedral", "separable", "auto")
# Per-pixel |sum_k p_k - 1| allowed: float32 softmax outputs are within ~1e-6; 1e-3 also admits
# probabilities stored in float16 or bfloat16 and then upcast.
PROBS_SUM_TOLERANCE = 1e-3


def dense_crf(image, probs, params=None, method="meanfield", *, capacity=None, num_threads=None,
              separable_options=None):
    """Refines softmax probabilities with the dense CRF; returns Q, float32, shaped like `probs`.

    Args:
      image: uint8 RGB, [H, W, 3] or [B, H, W, 3] (numpy or JAX array).
      probs: float probabilities summing to 1 over the last axis, [H, W, K] or [B, H, W, K], K >= 2.
      params: `CRFParams` (default: DeepLab-v2's values).
      method: "meanfield", "permutohedral", "separable" or "auto" (`auto_method`: by backend).
      capacity: meanfield only: bilateral lattice vertices reserved per image (static; default H*W).
        When left unset and the inputs are concrete, an image that needs more is recomputed with a
        larger capacity; under `jax.jit` the surplus vertices are dropped (approximate result).
      num_threads: permutohedral only: host threads (default: the CPUs available, at most 8).
      separable_options: separable only: a `deeplab_jax.crf.separable.SeparableOptions`.
    """
    params = CRFParams() if params is None else params
    if not isinstance(params, CRFParams):
        raise TypeError(f"params must be a deeplab_jax.crf.CRFParams, got {type(params).__name__}")
    params.validate()
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    image, probs = _as_arrays(image, probs)
    batched = _check_shapes(image, probs)
    traced = _is_tracer(image) or _is_tracer(probs)
    if not traced:
        _check_values(probs)
    if method == "auto":
        method = auto_method(traced=traced or _is_tracer(params.bi_w) or _is_tracer(params.pos_w))
    if method == "meanfield":
        return _meanfield(image, probs, params, batched, capacity)
    if method == "separable":
        return _separable(image, probs, params, batched, separable_options)
    return _permutohedral(image, probs, params, batched, traced, num_threads)


def auto_method(backend=None, traced=False):
    """The method `method="auto"` runs on `backend` (default: JAX's default backend, "cpu" when JAX
    is absent); `traced`: the inputs are JAX tracers (inside jit, vmap or grad).

    * cpu: "permutohedral" (exact; 0.66-0.97x pydensecrf2's time at VOC size, "meanfield"
      0.56-0.66x since its softmax change, benchmarks/README.md "Dense CRF", 2-core VM: as fast,
      but not exact); under tracing "meanfield" (jit/vmap/grad, 99.8% labels equal to the exact
      CRF), since the host method has no gradient. "separable" is faster (0.35-0.50x at VOC size
      on a quiet machine; 129x129: 14 ms against 82 ms exact) but approximates the exact CRF
      (97.6-99.2% equal labels on photographs, 91-95% of its mIoU gain on the demo), so on a CPU,
      where the exact one is affordable, it is not chosen automatically.
    * tpu: "separable": its program is matrix products, elementwise maths and loops (checked: no
      sort, scatter or 64-bit integer in its lowered HLO, tests/crf/test_separable.py), while the
      lattice needs a 64-bit key sort and scatter-adds, which TPUs lack or emulate slowly. Not
      measured on a TPU (none was available).
    * gpu (and others): "meanfield": on an H100 7.3 ms per VOC image at batch 8 (10.4 ms at
      batch 1), about a DeepLab-v2 forward pass's time, with labels 99.8-99.96% equal to the exact
      CRF's; "separable" is 2.5x faster there (2.9 ms) but approximates (89.7-98.4%).
      `benchmarks/crf.py --device-batches 1,8` compares both methods on a device.
    """
    if backend is None:
        jax = sys.modules.get("jax")
        if jax is None:
            try:
                import jax
            except ImportError:  # pragma: no cover - JAX is a dependency of the package
                return "permutohedral"
        backend = jax.default_backend()
    if backend == "tpu":
        return "separable"
    if backend == "cpu":
        return "meanfield" if traced else "permutohedral"
    return "meanfield"


def _meanfield(image, probs, params, batched, capacity):
    import jax.numpy as jnp

    from deeplab_jax.crf import meanfield

    images = jnp.asarray(image) if batched else jnp.asarray(image)[None]
    probs_b = jnp.asarray(probs, jnp.float32)
    probs_b = probs_b if batched else probs_b[None]
    height, width = images.shape[1:3]
    automatic = capacity is None
    capacity = meanfield.default_capacity(height, width) if automatic else int(capacity)
    if capacity < 1:
        raise ValueError(f"capacity must be a positive number of lattice vertices, got {capacity}")
    q, num_vertices = meanfield.meanfield(images, probs_b, params, capacity)
    needed = _concrete_max(num_vertices)
    if automatic and needed is not None and needed > capacity:
        # Grow in powers of two of H*W (few distinct compilations), up to the worst case 6 H*W.
        pixels = height * width
        factor = 1
        while factor * pixels < needed and factor < 6:
            factor *= 2
        capacity = min(factor, 6) * pixels
        q, _ = meanfield.meanfield(images, probs_b, params, capacity)
    return q if batched else q[0]


def _separable(image, probs, params, batched, options):
    import jax.numpy as jnp

    from deeplab_jax.crf import separable

    options = (separable.SeparableOptions() if options is None else options).validate()
    images = jnp.asarray(image) if batched else jnp.asarray(image)[None]
    probs_b = jnp.asarray(probs, jnp.float32)
    q = separable.separable(images, probs_b if batched else probs_b[None], params, options)
    return q if batched else q[0]


def _permutohedral(image, probs, params, batched, traced, num_threads):
    if traced or _is_tracer(params.bi_w) or _is_tracer(params.pos_w):
        return _permutohedral_callback(image, probs, params, num_threads)
    images = np.asarray(image)
    probs_np = np.asarray(probs, np.float32)
    if not batched:
        return permutohedral.dense_crf_single(images, probs_np, params, num_threads)
    return np.stack([permutohedral.dense_crf_single(i, p, params, num_threads)
                     for i, p in zip(images, probs_np)])


def _permutohedral_callback(image, probs, params, num_threads):
    """The host implementation as a `jax.pure_callback` (usable under jit and vmap)."""
    import jax
    import jax.numpy as jnp

    def host(image_np, probs_np, bi_w, pos_w):
        host_params = params.replace(bi_w=float(bi_w), pos_w=float(pos_w))
        image_np = np.asarray(image_np)
        probs_np = np.asarray(probs_np, np.float32)
        if image_np.ndim == 3:
            return permutohedral.dense_crf_single(image_np, probs_np, host_params, num_threads)
        return np.stack([permutohedral.dense_crf_single(i, p, host_params, num_threads)
                         for i, p in zip(image_np, probs_np)])

    result = jax.ShapeDtypeStruct(probs.shape, jnp.float32)
    return jax.pure_callback(host, result, image, jnp.asarray(probs, jnp.float32),
                             jnp.asarray(params.bi_w, jnp.float32),
                             jnp.asarray(params.pos_w, jnp.float32), vmap_method="sequential")


def _as_arrays(image, probs):
    """Lists become numpy arrays; numpy and JAX arrays pass through."""
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    if not hasattr(probs, "shape") or not hasattr(probs, "dtype"):
        probs = np.asarray(probs)
    return image, probs


def _check_shapes(image, probs):
    """Validates ranks, dtypes and shapes; returns whether the inputs are batched."""
    if np.dtype(image.dtype) != np.uint8:
        raise TypeError(
            f"image must be uint8 RGB with values 0..255, got dtype {np.dtype(image.dtype)}; "
            "convert it, e.g. np.clip(image * 255, 0, 255).astype(np.uint8) for a [0, 1] float "
            "image (the CRF's colour standard deviation is in 0..255 units)")
    if image.ndim not in (3, 4) or image.shape[-1] != 3:
        raise ValueError(
            f"image must be [H, W, 3] or [B, H, W, 3] (RGB, channels last), got shape "
            f"{tuple(image.shape)}")
    if not np.issubdtype(np.dtype(probs.dtype), np.floating):
        raise TypeError(
            f"probs must be floating-point softmax probabilities, got dtype "
            f"{np.dtype(probs.dtype)}; apply a softmax to the logits first")
    if probs.ndim != image.ndim:
        raise ValueError(
            f"probs must have the same rank as image ([H, W, K] with [H, W, 3], or [B, H, W, K] "
            f"with [B, H, W, 3]); got probs {tuple(probs.shape)} and image {tuple(image.shape)}")
    if tuple(probs.shape[:-1]) != tuple(image.shape[:-1]):
        raise ValueError(
            f"probs and image must agree on the leading dimensions (batch, height, width): probs "
            f"{tuple(probs.shape)} vs image {tuple(image.shape)}; resize the probabilities to the "
            "image size (e.g. bilinear upsampling of the logits) before the CRF")
    if probs.shape[-1] < 2:
        raise ValueError(
            f"probs must have K >= 2 classes on the last axis, got K={probs.shape[-1]}; for a "
            "binary problem pass both classes, e.g. np.stack([1 - p, p], axis=-1)")
    if min(image.shape[-3:-1]) < 1:
        raise ValueError(f"image must have a positive height and width, got {tuple(image.shape)}")
    return image.ndim == 4


def _check_values(probs):
    """Concrete probabilities must be finite, non-negative and sum to 1 per pixel."""
    module = np
    if "jax" in sys.modules and isinstance(probs, sys.modules["jax"].Array):
        import jax.numpy as module
    finite = bool(module.all(module.isfinite(probs)))
    if not finite:
        raise ValueError("probs contains NaN or infinite values")
    if bool(module.any(probs < 0)):
        raise ValueError("probs must be non-negative (softmax outputs); found negative values")
    deviation = float(module.max(module.abs(module.sum(probs.astype(module.float32), axis=-1) - 1)))
    if deviation > PROBS_SUM_TOLERANCE:
        raise ValueError(
            f"probs must sum to 1 over the last (class) axis within {PROBS_SUM_TOLERANCE}; the "
            f"largest deviation is {deviation:.3g}. Pass softmax probabilities (not logits or "
            "scores): e.g. jax.nn.softmax(logits, axis=-1)")


def _is_tracer(value):
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(value, jax.core.Tracer)


def _concrete_max(values):
    """max(values) as an int, or None while tracing."""
    if _is_tracer(values):
        return None
    return int(np.max(np.asarray(values)))
