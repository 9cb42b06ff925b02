"""Non-finite values (NaN, inf) in parameters: one jittable flag and one host check.

A diverged run's weights are NaN/inf; a model built from them predicts class 0 everywhere without
any error. `all_finite` is the cheap flag the jitted train step computes with its metrics;
`check_finite` is what every loader runs before handing weights on (trained checkpoints,
converted weights, export), raising `NonFiniteError` that names where the weights came from and
the first bad tensors.
"""

import jax
import jax.numpy as jnp
import numpy as np


class NonFiniteError(FloatingPointError, ValueError):
    """Weights or a training step holding NaN or inf."""


def all_finite(tree):
    """A scalar bool array: every floating-point leaf of `tree` is finite (jittable)."""
    flags = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


@jax.jit
def _leaf_flags(tree):
    return jax.tree.map(lambda leaf: jnp.all(jnp.isfinite(leaf)), tree)


def _is_float(leaf):
    return np.issubdtype(np.result_type(leaf), np.inexact)


def non_finite_leaves(tree) -> list[str]:
    """'/'-joined paths of the floating-point leaves holding a NaN or inf.

    Host arrays are checked with numpy; device (possibly sharded, multi-process) arrays with one
    jitted reduction per leaf, so no array is gathered to the host.
    """
    named = [(jax.tree_util.keystr(path, simple=True, separator="/"), leaf)
             for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if _is_float(leaf)]
    on_host = [(name, leaf) for name, leaf in named if not isinstance(leaf, jax.Array)]
    on_device = [(name, leaf) for name, leaf in named if isinstance(leaf, jax.Array)]
    bad = [name for name, leaf in on_host if not np.all(np.isfinite(leaf))]
    if on_device:
        flags = jax.device_get(_leaf_flags([leaf for _, leaf in on_device]))
        bad += [name for (name, _), ok in zip(on_device, flags) if not ok]
    return sorted(bad)


def check_finite(tree, where: str):
    """Raises NonFiniteError naming `where` (e.g. 'checkpoint 15 in runs/x/checkpoints') if any
    floating-point leaf of `tree` holds a NaN or inf; returns `tree` otherwise."""
    bad = non_finite_leaves(tree)
    if bad:
        total = sum(1 for leaf in jax.tree.leaves(tree) if _is_float(leaf))
        shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise NonFiniteError(
            f"{where}: {len(bad)} of {total} tensors hold NaN or inf ({shown}); the run that "
            "wrote them diverged: use an earlier checkpoint or retrain with a lower learning rate")
    return tree
