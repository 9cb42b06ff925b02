"""Learning-rate schedules against their formulas; Caffe-style SGD; multipliers and decay masks."""

import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax.train import optim
from deeplab_jax.config import base_config


def _optim_config(**changes):
    config = base_config().optim
    for key, value in changes.items():
        config[key] = value
    return config


@pytest.mark.parametrize("step", [0, 5000, 10000, 19999, 20000])
def test_poly_schedule_matches_paper_formula(step):
    schedule = optim.learning_rate_schedule(_optim_config(), 20000)
    expected = 1e-3 * (1 - step / 20000) ** 0.9
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-12)


def test_step_schedule_and_warmup():
    schedule = optim.learning_rate_schedule(
        _optim_config(schedule="step", step_size=2000, step_gamma=0.1), 6000)
    assert [float(schedule(s)) for s in (0, 1999, 2000, 4000, 5999)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-5, 1e-5], rel=1e-5)
    warm = optim.learning_rate_schedule(_optim_config(schedule="constant", warmup_steps=10), 100)
    assert float(warm(0)) == pytest.approx(1e-4)
    assert float(warm(9)) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="schedule"):
        optim.learning_rate_schedule(_optim_config(schedule="cosine"), 10)


def _params():
    return {"backbone": {"conv": {"kernel": jnp.ones((2,)), "bn": {"scale": jnp.ones((2,))}}},
            "head": {"c0": {"kernel": jnp.ones((2,)), "bias": jnp.ones((2,))}}}


def test_multipliers_first_match_wins_and_decay_mask():
    rules = (("^head/.*bias$", 20.0), ("^head/", 10.0), ("/bn/", 0.0))
    mult = optim.multiplier_tree(_params(), rules)
    assert mult["head"]["c0"]["bias"] == 20.0
    assert mult["head"]["c0"]["kernel"] == 10.0
    assert mult["backbone"]["conv"]["bn"]["scale"] == 0.0
    assert mult["backbone"]["conv"]["kernel"] == 1.0
    mask = optim.decay_mask(_params(), r"(bias$|/bn/)")
    assert mask["head"]["c0"]["kernel"] and mask["backbone"]["conv"]["kernel"]
    assert not mask["head"]["c0"]["bias"] and not mask["backbone"]["conv"]["bn"]["scale"]


def test_sgd_follows_caffe_update_rule():
    """v <- m v + lr * mult * (g + wd * w); w <- w - v, with lr changing between steps."""
    params = {"backbone": {"w": jnp.array([1.0, -2.0])}, "head": {"kernel": jnp.array([0.5])}}
    config = _optim_config(schedule="poly", base_lr=0.1, weight_decay=0.01, momentum=0.9,
                           lr_multipliers=(("^head/", 10.0),), no_decay="")
    tx, schedule = optim.create_optimizer(config, params, num_steps=4)
    state = tx.init(params)
    grads = [{"backbone": {"w": jnp.array([0.3, 0.1])}, "head": {"kernel": jnp.array([-1.0])}},
             {"backbone": {"w": jnp.array([-0.2, 0.4])}, "head": {"kernel": jnp.array([2.0])}}]
    w = {"b": np.array([1.0, -2.0]), "h": np.array([0.5])}
    v = {"b": np.zeros(2), "h": np.zeros(1)}
    current = params
    for step, g in enumerate(grads):
        lr = 0.1 * (1 - step / 4) ** 0.9
        v["b"] = 0.9 * v["b"] + lr * 1.0 * (np.asarray(g["backbone"]["w"]) + 0.01 * w["b"])
        v["h"] = 0.9 * v["h"] + lr * 10.0 * (np.asarray(g["head"]["kernel"]) + 0.01 * w["h"])
        w = {"b": w["b"] - v["b"], "h": w["h"] - v["h"]}
        updates, state = tx.update(g, state, current)
        current = {"backbone": {"w": current["backbone"]["w"] + updates["backbone"]["w"]},
                   "head": {"kernel": current["head"]["kernel"] + updates["head"]["kernel"]}}
    np.testing.assert_allclose(np.asarray(current["backbone"]["w"]), w["b"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(current["head"]["kernel"]), w["h"], rtol=1e-6)


def test_zero_multiplier_freezes_even_with_decay_and_momentum():
    params = {"backbone": {"bn": {"scale": jnp.array([1.0, 2.0])}}}
    config = _optim_config(lr_multipliers=(("/bn/", 0.0),), no_decay="")
    tx, _ = optim.create_optimizer(config, params, num_steps=10)
    state = tx.init(params)
    updates, state = tx.update({"backbone": {"bn": {"scale": jnp.array([5.0, -3.0])}}}, state,
                               params)
    assert np.all(np.asarray(updates["backbone"]["bn"]["scale"]) == 0)
