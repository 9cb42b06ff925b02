"""Elementwise math of the separable CRF, written in the forms XLA:CPU runs fast.

* `exp_nonpositive`: exp(x) for x <= 0 from float and int32 bit arithmetic. exp(x) = 2^y with
  y = x log2(e) = n + f (n integer, f in [0, 1)): 2^n is written straight into a float32's exponent
  bits and 2^f is a polynomial. The filter evaluates tens of millions of Gaussian weights per image.
* `softmax_over_classes`: the mean-field update's softmax with the class-axis reductions unrolled.
Both equal jnp.exp / jax.nn.softmax on every backend: the exp within 3e-7 * max(1, |x|)
relative, the softmax to float32 rounding (tests/crf/test_fast_math.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

# 2^f on [0, 1): degree-5 polynomial fitted for relative error (max 1.9e-7, float32's own size).
_EXP2_COEFFS = (1.0, 0.6931516, 0.24016437, 0.05579373, 0.00903118, 0.00185875)


def exp_nonpositive(x):
    """exp(x) for x <= 0 as 2^n * p(f): elementwise float and int32 bit arithmetic only.

    XLA:CPU's exp took 3.7 ns per element on the 2-core VM (48M exps: 178 ms), which made building
    the weights cost more than all ten iterations; this is several times faster. Relative error
    <= 3e-7 * max(1, |x|): float32 rounding of x * log2(e) dominates for large |x| (4e-6 near -87,
    far below the bfloat16 rounding the weights then get). Underflows to 0 below exp(-87).
    """
    y = jnp.maximum(x, -87.0) * np.float32(1.4426950408889634)  # log2(e)
    n = jnp.floor(y)
    f = y - n
    p = np.float32(_EXP2_COEFFS[-1])
    for c in _EXP2_COEFFS[-2::-1]:
        p = p * f + np.float32(c)
    scale = jax.lax.bitcast_convert_type((n.astype(jnp.int32) + 127) << 23, jnp.float32)
    return jnp.where(x < -87.0, 0.0, scale * p)


# Up to this many classes the CPU softmax reduces the class axis by unrolled elementwise ops.
_UNROLLED_CLASSES = 64


def _softmax_unrolled(x_HxWxK):
    classes = [x_HxWxK[..., k] for k in range(x_HxWxK.shape[-1])]
    exps = jnp.exp(x_HxWxK - functools.reduce(jnp.maximum, classes)[..., None])
    total = functools.reduce(jnp.add, [exps[..., k] for k in range(x_HxWxK.shape[-1])])
    return exps / total[..., None]


def softmax_over_classes(x_HxWxK):
    """softmax over the last (class) axis.

    On XLA:CPU, jax.nn.softmax's max and sum over the class axis go to the YNNPACK reduce
    fusion, which made a mean-field iteration at VOC size about twice as slow as its matrix
    products and filters together (benchmarks/README.md); the same reductions written as a chain
    of elementwise maxima and sums over the K class slices stay in XLA's own loop fusions. Other
    backends, and many classes, keep jax.nn.softmax. The choice is made for the platform the
    program is lowered for (`lax.platform_dependent`), not the default backend: a program placed
    on another device, or exported for several platforms, gets each platform's form.
    """
    softmax = functools.partial(jax.nn.softmax, axis=-1)
    if x_HxWxK.shape[-1] > _UNROLLED_CLASSES:
        return softmax(x_HxWxK)
    return jax.lax.platform_dependent(x_HxWxK, cpu=_softmax_unrolled, default=softmax)
