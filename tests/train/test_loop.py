"""Training: golden first step, resume bit-identical, 8 devices == 1 device, loud failures."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from deeplab_jax import weights
from deeplab_jax.train import init_weights, loop
from deeplab_jax.train.loop import train_and_evaluate
from tests.helpers import training


def _final_params(workdir):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                    item_names=("state", "data"))
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return step, restored["state"]["params"]


def test_resume_is_bit_identical(tiny_config, tmp_path):
    """2 steps + resume + 2 steps == 4 uninterrupted steps, parameters equal bit for bit."""
    config = tiny_config
    config.optim.schedule = "constant"  # num_steps changes between the runs; the LR must not
    config.optim.warmup_steps = 0
    config.eval.every_steps = 1000
    config.checkpoint_every_steps = 1000
    config.predict.num_images = 0
    config.num_steps = 4
    train_and_evaluate(config, str(tmp_path / "straight"))
    config.num_steps = 2
    train_and_evaluate(config, str(tmp_path / "resumed"))
    config.num_steps = 4
    train_and_evaluate(config, str(tmp_path / "resumed"))
    # The longer second run is said and recorded: how the first 2 steps were set is kept.
    assert json.loads((tmp_path / "resumed" / "config_until_step_2.json").read_text())[
        "num_steps"] == 2
    assert json.loads((tmp_path / "resumed" / "config.json").read_text())["num_steps"] == 4
    step_a, params_a = _final_params(str(tmp_path / "straight"))
    step_b, params_b = _final_params(str(tmp_path / "resumed"))
    assert step_a == step_b == 4
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _one_step(config, devices):
    params, history = training.run_steps(config, [training.first_batch(config)], devices)
    return params, history[0]


def test_sharded_step_on_8_devices_equals_1_device(tiny_config, num_devices):
    tiny_config.optim.warmup_steps = 0
    # SGD: the update is proportional to the gradient. Adam's first update is lr * g / |g|, which
    # turns float32 noise in near-zero gradients into differences of up to lr.
    tiny_config.optim.name = "sgd"
    params_8, metrics_8 = _one_step(tiny_config, jax.devices())
    params_1, metrics_1 = _one_step(tiny_config, jax.devices()[:1])
    # Float32 sums in another order (per-device partial sums, all-reduced) differ at ~1e-5; a
    # sharding error (a batch half-seen, statistics of one device) moves the loss by percents.
    assert metrics_8["loss"] == pytest.approx(metrics_1["loss"], rel=5e-5)
    for a, b in zip(jax.tree.leaves(params_8), jax.tree.leaves(params_1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


# Golden values of the first step of configs/demo.py:tiny (seed 0). If a change was meant to alter
# initialisation, data order, augmentation or the loss, re-run this test, check the new numbers are
# sensible (loss near ln(8) = 2.08 at initialisation) and update them here.
GOLDEN_FIRST_STEP = {"loss": 2.0620, "pixel_accuracy": 0.1640}


def test_golden_first_step(tiny_config):
    tiny_config.optim.warmup_steps = 0
    _, metrics = _one_step(tiny_config, jax.devices())
    for name, value in GOLDEN_FIRST_STEP.items():
        assert metrics[name] == pytest.approx(value, abs=2e-3), (
            f"first-step {name} changed: {metrics[name]:.4f} vs golden {value}; "
            "see the comment above GOLDEN_FIRST_STEP")


def test_batch_not_divisible_by_devices_is_a_clear_error(tiny_config, tmp_path):
    tiny_config.batch_size = 12
    with pytest.raises(ValueError, match="multiple of 8"):
        train_and_evaluate(tiny_config, str(tmp_path))


def test_non_finite_loss_names_the_step():
    metrics = {"loss": jnp.float32(np.nan)}
    with pytest.raises(FloatingPointError, match="step 7"):
        loop._check_finite(7, metrics)


def test_training_starts_from_converted_weights(tiny_config, tmp_path):
    """config.model.init_checkpoint: saved variables replace the fresh ones (head kept if absent)."""
    setup, fresh, _ = training.build(tiny_config)
    other = setup.create(seed=5)
    shardings = setup.shardings
    saved = {"params": {"backbone": jax.device_get(other.params["backbone"])},
             "batch_stats": jax.device_get(other.batch_stats)}
    weights.save_variables(str(tmp_path / "init"), saved)
    state = init_weights.load_into(fresh, str(tmp_path / "init"), shardings)
    for a, b in zip(jax.tree.leaves(state.params["backbone"]),
                    jax.tree.leaves(other.params["backbone"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(state.params["head"]), jax.tree.leaves(fresh.params["head"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A tensor of the wrong shape is an error naming it.
    bad = {"params": {"head": jax.tree.map(lambda x: np.zeros((1,) + x.shape),
                                           jax.device_get(fresh.params["head"]))}}
    weights.save_variables(str(tmp_path / "bad"), bad)
    with pytest.raises(weights.WeightImportError, match="head"):
        init_weights.load_into(fresh, str(tmp_path / "bad"), shardings)
