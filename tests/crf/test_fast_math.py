"""The separable CRF's elementwise math against numpy (float64): exp for x <= 0 and the softmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax.crf.fast_math import exp_nonpositive, softmax_over_classes


def test_exp_relative_error_is_bounded_over_the_whole_range():
    x = np.concatenate([np.linspace(-87.0, 0.0, 200_001), -np.logspace(-8, 0, 1_000)])
    x = x.astype(np.float32)
    ours = np.asarray(exp_nonpositive(x), np.float64)
    truth = np.exp(x.astype(np.float64))
    # Near 0 as good as float32's own exp (2e-7); for large |x| rounding y = x log2(e) to float32
    # costs |x| times more (a weight's relative error, before its bfloat16 rounding, 4e-3).
    assert np.all(np.abs(ours / truth - 1.0) <= 3e-7 * np.maximum(1.0, np.abs(x)))
    assert float(exp_nonpositive(np.float32(0.0))) == 1.0


def test_exp_underflow_gives_zero_not_garbage():
    x = np.array([-87.5, -100.0, -1e6, -np.inf], np.float32)
    assert np.all(np.asarray(exp_nonpositive(x)) == 0.0)


def _softmax64(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("num_classes", [1, 2, 21, 65])  # 65: past the unrolled limit
def test_softmax_over_classes_equals_the_softmax(num_classes):
    rng = np.random.default_rng(num_classes)
    x = (rng.standard_normal((7, 9, num_classes)) * 20).astype(np.float32)
    x[0, 0] = 500.0  # large, equal logits: no overflow, a uniform distribution
    ours = np.asarray(jax.jit(softmax_over_classes)(x))
    np.testing.assert_allclose(ours, _softmax64(x), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(ours[0, 0], 1.0 / num_classes, rtol=1e-6)


def test_softmax_over_classes_gradient_equals_the_softmax_gradient():
    x = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    weights = np.broadcast_to(np.arange(5, dtype=np.float32), x.shape)
    grad = jax.grad(lambda v: (softmax_over_classes(v) * weights).sum())(x)
    expected = jax.grad(lambda v: (jax.nn.softmax(v) * weights).sum())(x)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_classes, cpu_reduces", [(21, False), (65, True)])
def test_softmax_form_follows_the_platform_lowered_for(num_classes, cpu_reduces):
    """CPU programs get the unrolled form (no class-axis reduce) up to 64 classes; a program
    lowered for a GPU (here from this CPU-only machine, as `jax.export` does) gets the softmax
    with its reductions, whatever the default backend of the process that lowered it."""
    x = jnp.zeros((3, 4, num_classes), jnp.float32)
    traced = jax.jit(softmax_over_classes).trace(x)
    lowered = lambda platforms: traced.lower(lowering_platforms=platforms).as_text()
    assert ("stablehlo.reduce" in lowered(("cpu",))) == cpu_reduces
    assert "stablehlo.reduce" in lowered(("cuda",))
