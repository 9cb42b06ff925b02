"""Optimisers and learning-rate schedules of the DeepLab recipes, built from config.

DeepLab-v2 §4.1.2: SGD with momentum 0.9, weight decay 5e-4, the "poly" policy
lr = base * (1 - step / max_steps) ** 0.9 (better than "step", §4.1.1), and the classifier at 10x
the base rate (biases 20x, no decay, as in the released prototxts). SGD follows Caffe's update,
v <- m v + lr * mult * (g + wd * w); w <- w - v, i.e. the learning rate enters *before* the momentum
(optax.sgd applies it after, which differs whenever the rate changes). Multipliers and frozen
parameters are chosen by regex over 'a/b/c' parameter paths (as big_vision does); multiplier 0
freezes (DeepLab-v2 freezes BatchNorm). 'adamw' is offered for from-scratch runs (the demo).
"""

import re
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import optax

from deeplab_jax.parallel.partitioning import path_string


def learning_rate_schedule(config_optim, num_steps: int):
    """step -> learning rate for 'poly', 'step' or 'constant', with optional linear warm-up."""
    base = float(config_optim.base_lr)
    warmup = int(config_optim.warmup_steps)
    name = config_optim.schedule
    if name == "poly":
        power = float(config_optim.poly_power)

        def main(step):
            # (num_steps - step) / num_steps, not 1 - step / num_steps: float32 keeps the
            # last steps' small remainders exact.
            remaining = jnp.clip((num_steps - step) / max(num_steps, 1), 0.0, 1.0)
            return base * remaining ** power
    elif name == "step":
        size, gamma = int(config_optim.step_size), float(config_optim.step_gamma)
        if size <= 0:
            raise ValueError(f"config.optim.step_size must be positive, got {size}")

        def main(step):
            return base * gamma ** jnp.floor(step / size)
    elif name == "constant":
        def main(step):
            return base * jnp.ones_like(step, jnp.float32)
    else:
        raise ValueError(f"config.optim.schedule={name!r}; use 'poly', 'step' or 'constant'")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        rate = main(step)
        if warmup > 0:
            rate = rate * jnp.minimum(1.0, (step + 1.0) / warmup)
        return rate

    return schedule


def multiplier_tree(params, rules: Sequence[Tuple[str, float]]):
    """Per-leaf learning-rate multiplier: the first matching (regex, multiplier) rule, else 1."""
    compiled = [(re.compile(pattern), float(mult)) for pattern, mult in rules]

    def pick(path, _):
        name = path_string(path)
        for pattern, mult in compiled:
            if pattern.search(name):
                return mult
        return 1.0

    return jax.tree_util.tree_map_with_path(pick, params)


def decay_mask(params, no_decay: str):
    """True where weight decay applies (not matching the `no_decay` regex)."""
    pattern = re.compile(no_decay) if no_decay else None
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not (pattern and pattern.search(path_string(path))), params)


def scale_by_tree(multipliers) -> optax.GradientTransformation:
    """Multiplies each update leaf by a fixed per-leaf constant (LR multipliers; 0 freezes)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

    return optax.GradientTransformation(init, update)


def create_optimizer(config_optim, params, num_steps: int):
    """Returns (optax transformation, schedule) for the config's recipe on these parameters."""
    schedule = learning_rate_schedule(config_optim, num_steps)
    multipliers = multiplier_tree(params, tuple(tuple(r) for r in config_optim.lr_multipliers))
    mask = decay_mask(params, config_optim.no_decay)
    chain = []
    if config_optim.grad_clip_norm:
        chain.append(optax.clip_by_global_norm(float(config_optim.grad_clip_norm)))
    if config_optim.name == "sgd":
        chain += [
            optax.add_decayed_weights(float(config_optim.weight_decay), mask=mask),
            scale_by_tree(multipliers),
            optax.scale_by_schedule(lambda step: -schedule(step)),
            optax.trace(decay=float(config_optim.momentum)),
        ]
    elif config_optim.name == "adamw":
        chain += [
            optax.scale_by_adam(),
            optax.add_decayed_weights(float(config_optim.weight_decay), mask=mask),
            scale_by_tree(multipliers),
            optax.scale_by_schedule(lambda step: -schedule(step)),
        ]
    else:
        raise ValueError(f"config.optim.name={config_optim.name!r}; use 'sgd' or 'adamw'")
    return optax.chain(*chain), schedule
