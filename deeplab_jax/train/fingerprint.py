"""A checksum of the training state, stored with each checkpoint and checked on restore.

orbax/tensorstore restore a checkpoint whose array files had bytes flipped without any error (the
values are just wrong), so each checkpoint carries a fingerprint of the state it was written
from: per tensor, the sum over elements of (raw bits as uint32) x (2 x flat index + 1), modulo
2^32. Any single changed element changes it (odd multipliers are invertible mod 2^32); integer
sums are exact in any order, so the value does not depend on the device count or sharding. It is
one jitted reduction over the (possibly sharded, multi-process) state, computed together with
the all-finite flag; nothing is gathered to one host.
"""

import jax
import jax.numpy as jnp
import numpy as np

from deeplab_jax import finite


def _as_uint32(leaf):
    if leaf.dtype == jnp.bool_:
        return leaf.astype(jnp.uint32)
    bits = leaf.dtype.itemsize * 8
    if bits == 64:
        pairs = jax.lax.bitcast_convert_type(leaf, jnp.uint32)  # (..., 2)
        return pairs[..., 0] ^ (pairs[..., 1] * jnp.uint32(0x9E3779B1))
    unsigned = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[bits]
    return jax.lax.bitcast_convert_type(leaf, unsigned).astype(jnp.uint32)


def _leaf_sum(leaf):
    bits = _as_uint32(leaf)
    index = jnp.zeros(bits.shape, jnp.uint32)
    for axis in range(bits.ndim):  # flat row-major index, computed in the array's own layout
        index = index * jnp.uint32(bits.shape[axis]) + jax.lax.broadcasted_iota(
            jnp.uint32, bits.shape, axis)
    return jnp.sum(bits * (index * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)


@jax.jit
def _summarise(tree):
    return [_leaf_sum(leaf) for leaf in jax.tree.leaves(tree)], finite.all_finite(tree)


def fingerprint(tree) -> tuple[dict, bool]:
    """({'/'-joined leaf path: uint32 checksum}, every floating-point leaf finite) of `tree`."""
    names = [jax.tree_util.keystr(path, simple=True, separator="/")
             for path, _ in jax.tree_util.tree_leaves_with_path(tree)]
    sums, ok = jax.device_get(_summarise(tree))
    return {name: int(np.uint32(value)) for name, value in zip(names, sums)}, bool(ok)


def mismatches(expected: dict, actual: dict) -> list[str]:
    """Leaf paths whose checksums differ (or that only one side has)."""
    return sorted(name for name in set(expected) | set(actual)
                  if expected.get(name) != actual.get(name))
