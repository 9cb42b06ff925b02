"""Helpers of the model tests: random variables without `model.init`, parameter counts, and NumPy
references (convolution, Caffe pooling, bilinear resizing, BatchNorm, separable convs).

Variables are drawn with NumPy from the shapes `jax.eval_shape` gives: this jaxlib compiles
threefry random ops slowly on CPU, so `model.init` would dominate the suite's time.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from deeplab_jax import models
from deeplab_jax.models import layers

RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
# Trainable variables of TF models/research/deeplab's xception_65 without logits (derived from its
# block table in tests/models/test_v3_backbones.py).
XCEPTION65_TF_COUNT = 37_867_312
BN_EPSILON = layers.NormConfig().epsilon


def random_variables(model, *args, seed=0, **kwargs):
    """Random variables with the tree of `model.init(rngs, *args, **kwargs)` and sensible scales.

    Kernels He-normal, biases and BN offsets N(0, 0.1), BN scales 1 + N(0, 0.1), running means
    N(0, 0.1), running variances U(0.5, 1.5): BatchNorm is a non-trivial affine map.
    """
    shapes = jax.eval_shape(functools.partial(model.init, **kwargs), RNGS, *args)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        collection = jax.tree_util.keystr(path[:1])
        if "kernel" in name:
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)
        elif "scale" in name:
            value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
        elif "var" in name and "batch_stats" in collection:
            value = rng.uniform(0.5, 1.5, size=leaf.shape)
        else:  # biases, BN offsets, running means
            value = 0.1 * rng.normal(size=leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def count_params(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def abstract_params(model, input_shape):
    """The variables' shapes of `model.init` on a float32 input of `input_shape`, traced only."""
    return jax.eval_shape(model.init, RNGS, jax.ShapeDtypeStruct(input_shape, jnp.float32))


def abstract_init(model, shape, **kwargs):
    """(variables, logits) shapes of a DeepLab model's init_with_output on uint8 images."""
    logits, variables = jax.eval_shape(
        functools.partial(model.init_with_output, **kwargs), RNGS,
        jax.ShapeDtypeStruct(shape, jnp.uint8),
    )
    return variables, logits


def numpy_correlate(x_BxHxWxC, kernel_HxWxIxO, pad, stride=1):
    """Plain cross-correlation with symmetric zero padding, written out offset by offset."""
    batch, height, width, _ = x_BxHxWxC.shape
    kh, kw, _, out = kernel_HxWxIxO.shape
    x = np.pad(x_BxHxWxC, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h, out_w = height + 2 * pad - kh + 1, width + 2 * pad - kw + 1
    y = np.zeros((batch, out_h, out_w, out))
    for dy in range(kh):
        for dx in range(kw):
            y += x[:, dy:dy + out_h, dx:dx + out_w, :] @ kernel_HxWxIxO[dy, dx]
    return y[:, ::stride, ::stride]


def dilate_kernel(kernel_HxWxIxO, rate):
    """The atrous filter written as a dense one: rate - 1 zeros between the taps (v2 §3.1)."""
    k = kernel_HxWxIxO.shape[0]
    size = k + (k - 1) * (rate - 1)
    dense = np.zeros((size, size) + kernel_HxWxIxO.shape[2:])
    dense[::rate, ::rate] = kernel_HxWxIxO
    return dense


def caffe_pool_reference(x_HxW, window, stride, pad, ceil_mode, mode):
    """Caffe's PoolingLayer loops (max ignores padding; ave divides by the clipped window)."""
    height, width = x_HxW.shape

    def out_size(size):
        if ceil_mode:
            out = int(np.ceil((size + 2 * pad - window) / stride)) + 1
            if pad and (out - 1) * stride >= size + pad:
                out -= 1
            return out
        return (size + 2 * pad - window) // stride + 1

    out = np.zeros((out_size(height), out_size(width)))
    for ph in range(out.shape[0]):
        for pw in range(out.shape[1]):
            hstart, wstart = ph * stride - pad, pw * stride - pad
            hend, wend = min(hstart + window, height + pad), min(wstart + window, width + pad)
            count = (hend - hstart) * (wend - wstart)
            cells = x_HxW[max(hstart, 0):min(hend, height), max(wstart, 0):min(wend, width)]
            out[ph, pw] = cells.max() if mode == "max" else cells.sum() / count
    return out


def bilinear_per_pixel(x_HxWxC, out_h, out_w, align_corners):
    """Textbook bilinear interpolation, one output pixel at a time."""
    in_h, in_w, _ = x_HxWxC.shape

    def source(i, in_size, out_size):
        if align_corners:
            return 0.0 if out_size == 1 else i * (in_size - 1) / (out_size - 1)
        return min(max((i + 0.5) * in_size / out_size - 0.5, 0.0), in_size - 1)

    out = np.zeros((out_h, out_w, x_HxWxC.shape[2]))
    for i in range(out_h):
        y = source(i, in_h, out_h)
        y0 = math.floor(y)
        y1, fy = min(y0 + 1, in_h - 1), y - y0
        for j in range(out_w):
            x = source(j, in_w, out_w)
            x0 = math.floor(x)
            x1, fx = min(x0 + 1, in_w - 1), x - x0
            out[i, j] = ((1 - fy) * (1 - fx) * x_HxWxC[y0, x0] + (1 - fy) * fx * x_HxWxC[y0, x1]
                         + fy * (1 - fx) * x_HxWxC[y1, x0] + fy * fx * x_HxWxC[y1, x1])
    return out


def block_diagonal(kernel_HxWxIgxO, groups):
    """The dense (k, k, C, O) kernel a grouped conv equals: zeros between the groups' blocks."""
    k, _, in_per_group, out = kernel_HxWxIgxO.shape
    out_per_group = out // groups
    dense = np.zeros((k, k, in_per_group * groups, out))
    for g in range(groups):
        dense[:, :, g * in_per_group:(g + 1) * in_per_group,
              g * out_per_group:(g + 1) * out_per_group] = \
            kernel_HxWxIgxO[:, :, :, g * out_per_group:(g + 1) * out_per_group]
    return dense


def np_bn(x, bn, stats):
    """BatchNorm in inference mode with the stored statistics."""
    return ((x - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + BN_EPSILON)
            * np.asarray(bn["scale"]) + np.asarray(bn["bias"]))


def np_conv_bn(x, params, stats, rate=1, relu=True, stride=1):
    """ConvBN (conv/bn submodules) in NumPy; grouped kernels are made block-diagonal first."""
    kernel = np.asarray(params["conv"]["kernel"], np.float64)
    groups = x.shape[-1] // kernel.shape[2]
    kernel = dilate_kernel(block_diagonal(kernel, groups), rate)
    y = np_bn(numpy_correlate(x, kernel, (kernel.shape[0] - 1) // 2, stride),
              params["bn"], stats["bn"])
    return np.maximum(y, 0.0) if relu else y


def np_separable(x, params, stats, rate=1, depthwise_relu=True, relu=True, stride=1):
    """SeparableConvBN (depthwise/pointwise ConvBN submodules) in NumPy."""
    h = np_conv_bn(x, params["depthwise"], stats["depthwise"], rate, depthwise_relu, stride)
    return np_conv_bn(h, params["pointwise"], stats["pointwise"], 1, relu)


def images(size=33, batch=2):
    """Random float32 RGB images in [0, 255), [batch, size, size, 3] (seeded)."""
    return jnp.asarray(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)),
                       jnp.float32)


def with_nontrivial_batchnorm(variables, seed=0):
    """BatchNorm scales, offsets and running statistics drawn away from their identity init."""
    rng = np.random.default_rng(seed)
    ranges = {"scale": (0.5, 1.5), "bias": (-0.2, 0.2), "mean": (-0.2, 0.2), "var": (0.3, 2.0)}

    def draw(path, leaf):
        keys = [getattr(key, "key", None) for key in path]
        if "bn" not in keys or keys[-1] not in ranges:
            return leaf
        return jnp.asarray(rng.uniform(*ranges[keys[-1]], leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, variables)


def batchnorm_model(name, overrides, num_classes=5):
    """(model, variables) of a registered model with BatchNorm drawn away from identity."""
    model = models.get_model(name, num_classes, **overrides)
    # Any parameter values do; keys of the "rbg" generator compile several times faster than the
    # default threefry ones. Jitted: op by op, Xception-65 at 1/8 width took 29 s to initialise
    # on 2 AVX2 cores, one program 11 s.
    keys = {"params": jax.random.key(0, impl="rbg"), "dropout": jax.random.key(1, impl="rbg")}
    variables = jax.jit(lambda k: model.init(k, images(batch=1), train=False))(keys)
    return model, with_nontrivial_batchnorm(variables)


def forward(model, variables, inputs, **apply_kwargs):
    """model.apply(variables, inputs, **apply_kwargs) as one jitted program, as numpy. Run op by
    op, a ResNet's forward pass compiles each of its hundreds of small ops on first use, which
    took several times longer on 2 cores (Xception-65 at 1/8 width: most of a 50 s test)."""
    return np.asarray(jax.jit(functools.partial(model.apply, **apply_kwargs))(variables, inputs))


def relative_error(actual, expected):
    return float(jnp.linalg.norm(actual - expected) / jnp.linalg.norm(expected))
