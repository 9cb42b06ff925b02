"""A model specialised for inference: frozen BatchNorm folded into the convolutions.

    model, variables = prepare(model, variables)
    logits = model.apply(variables, images, train=False)

In inference BatchNorm is a fixed per-channel affine map of the convolution before it,
y = (conv(x, W) - mean) * s + beta with s = gamma / sqrt(var + eps), which is the convolution
conv(x, W * s) + (beta - mean * s). `prepare` rewrites every `ConvBN` unit that way: the returned
module is a clone whose `NormConfig`s carry `folded=True` (a `ConvBN` then declares conv/{kernel,
bias} and no BatchNorm), and the returned variables hold the folded kernels and biases, without the
BatchNorm parameters and statistics. The logits equal the original model's up to float32 rounding.
The prepared model is for inference only: it raises when applied with `train=True`.

The units and their epsilons are found by tracing the model once abstractly (`jax.eval_shape`, no
computation) and recording every `ConvBN` call, so nothing depends on how a factory nests its
modules. Models without BatchNorm (the VGG DeepLab-v1/v2) are returned unchanged.
"""

import dataclasses
from collections.abc import Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from deeplab_jax.models.layers import ConvBN, NormConfig

# Any size works: the trace is abstract and the set of ConvBN calls does not depend on it.
_TRACE_IMAGE_SIZE = (129, 129)


def _plain_dict(tree):
    """Nested dicts (FrozenDicts included) as plain dicts, leaves shared."""
    if isinstance(tree, Mapping):
        return {key: _plain_dict(value) for key, value in tree.items()}
    return tree


def conv_bn_units(model, variables, image_size=_TRACE_IMAGE_SIZE):
    """{module path: NormConfig} of every ConvBN the model calls in inference."""
    units = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, ConvBN) and context.method_name == "__call__":
            units[tuple(context.module.path)] = context.module.norm
        return next_fun(*args, **kwargs)

    images = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
    return units


def _fold_norm_fields(value):
    """`value` with folded=True in every NormConfig it holds (modules cloned, others kept)."""
    if isinstance(value, NormConfig):
        return dataclasses.replace(value, folded=True)
    if isinstance(value, nn.Module):
        updates = {}
        for field in dataclasses.fields(value):
            if not field.init or field.name in ("parent", "name"):
                continue
            current = getattr(value, field.name)
            folded = _fold_norm_fields(current)
            if folded is not current:
                updates[field.name] = folded
        return value.clone(**updates) if updates else value
    if isinstance(value, (tuple, list)):
        folded = [_fold_norm_fields(item) for item in value]
        if any(new is not old for new, old in zip(folded, value)):
            return type(value)(folded)
    return value


def _subtree(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def fold_conv_bn(conv_params, bn_params, bn_stats, epsilon):
    """conv {kernel (..., O)} + BN {scale, bias} and {mean, var} -> conv {kernel, bias}."""
    kernel = conv_params["kernel"]
    dtype = jnp.promote_types(kernel.dtype, jnp.float32)
    inverse_std = jax.lax.rsqrt(bn_stats["var"].astype(dtype) + epsilon)
    scale = bn_params["scale"].astype(dtype) * inverse_std
    bias = bn_params["bias"].astype(dtype) - bn_stats["mean"].astype(dtype) * scale
    scale_per_output = scale.reshape((1,) * (kernel.ndim - 1) + scale.shape)
    return {"kernel": (kernel.astype(dtype) * scale_per_output).astype(kernel.dtype),
            "bias": bias.astype(bn_params["bias"].dtype)}


def prepare(model, variables):
    """(model, variables) -> (inference model, its variables); see the module docstring."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare expects a flax.linen Module, got {type(model).__name__}")
    variables = _plain_dict(variables)
    if "params" not in variables:
        raise ValueError("variables have no 'params' collection")
    try:
        units = conv_bn_units(model, variables)
    except flax.errors.ScopeCollectionNotFound as error:
        raise ValueError(
            "prepare needs the BatchNorm running averages: pass variables with 'batch_stats' "
            "(from model.init or a checkpoint)") from error
    if not units:
        return model, variables
    already = sorted("/".join(path) for path, norm in units.items() if norm.folded)
    if already:
        raise ValueError(f"the model is already prepared (folded units: {already[:3]} ...)")
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    for path, norm in units.items():
        unit_params = _subtree(params, path)
        unit_stats = _subtree(stats, path)["bn"]
        unit_params["conv"] = fold_conv_bn(unit_params["conv"], unit_params.pop("bn"), unit_stats,
                                           norm.epsilon)
        _subtree(stats, path).pop("bn")
    prepared = {key: value for key, value in variables.items() if key != "batch_stats"}
    if jax.tree_util.tree_leaves(stats):
        prepared["batch_stats"] = stats
    return _fold_norm_fields(model), prepared


def prepare_if_unfolded(model, variables):
    """`prepare` when `variables` hold BatchNorm statistics; otherwise both unchanged.

    What evaluation, prediction and export call: they accept a model as trained (folded here), a
    model `prepare` already returned, or a model without BatchNorm (nothing to fold).
    """
    if isinstance(variables, Mapping) and "batch_stats" in variables:
        return prepare(model, variables)
    return model, variables
