"""Gradient accumulation: the accumulated step equals the large-batch step (frozen BN)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import losses
from deeplab_jax.parallel import mesh as mesh_lib
from deeplab_jax.train import accumulation
from deeplab_jax.train.loop import train_and_evaluate
from tests.helpers.training import assert_trees_close, first_batch, run_steps


def test_micro_batches_interleave_rows():
    rows = jnp.arange(8 * 2).reshape(8, 2)
    micro = np.asarray(accumulation.split_micro_batches(rows, 4))
    assert micro.shape == (4, 2, 2)
    np.testing.assert_array_equal(micro[1], [[2, 3], [10, 11]])  # rows 1 and 5


def _denominator(labels, num_classes=5, **loss_options):
    return losses.loss_denominator(jnp.asarray(labels), (3, 3), num_classes,
                                   losses.LossConfig(**loss_options))


def test_loss_denominator_counts_valid_positions_by_hand():
    labels = np.full((2, 9, 9), 255, np.uint8)
    labels[0, 0, 0] = 1  # on a subsampled position (stride 4: rows/cols 0, 4, 8)
    labels[0, 4, 8] = 2
    labels[1, 8, 8] = 7  # class 7 >= num_classes 5: not counted
    labels[1, 1, 1] = 1  # off the subsampled grid
    assert float(_denominator(labels)) == 2.0
    assert float(_denominator(labels, class_weights=(1, 0.5, 3, 1, 1))) == 0.5 + 3.0
    assert float(_denominator(labels, label_mode="upsample")) == 3.0
    # The data set's ignore label, not a hard-coded 255, marks the unscored pixels.
    labels[labels == 255] = 4
    assert float(_denominator(labels, ignore_label=4)) == 2.0


def _sgd(config):
    # SGD's update is linear in the gradient, so parameters compare gradients directly.
    config.optim.name = "sgd"
    config.optim.schedule = "constant"
    config.optim.warmup_steps = 0
    config.optim.base_lr = 0.1
    config.batch_size = 16
    return config


def test_accumulated_step_equals_the_large_batch_step(tiny_config, num_devices):
    config = _sgd(tiny_config)
    config.model.overrides.bn_frozen = True  # the paper's setting: BN uses running statistics
    batch = first_batch(config)
    config.grad_accum_steps = 1
    params_big, metrics_big = run_steps(config, [batch])
    config.grad_accum_steps = 2
    params_acc, metrics_acc = run_steps(config, [batch])
    # float32 sums in another order: the loss to 1e-5, parameters (one step, lr 0.1) to 1e-6.
    assert metrics_acc[0]["loss"] == pytest.approx(metrics_big[0]["loss"], rel=1e-5)
    assert metrics_acc[0]["grad_norm"] == pytest.approx(metrics_big[0]["grad_norm"], rel=1e-5)
    assert metrics_acc[0]["pixel_accuracy"] == pytest.approx(metrics_big[0]["pixel_accuracy"],
                                                             abs=1e-7)
    assert_trees_close(params_acc, params_big, rtol=1e-5, atol=1e-6)


def test_trainable_bn_running_mean_matches_the_large_batch(tiny_config, num_devices):
    """First BN layer: the mean of micro-batch updates is the large-batch update; the variance
    is the mean of micro-batch variances, which cannot exceed the batch variance."""
    config = _sgd(tiny_config)
    batch = first_batch(config)
    config.grad_accum_steps = 1
    state_big, _ = run_steps(config, [batch], return_state=True)
    config.grad_accum_steps = 4
    state_acc, _ = run_steps(config, [batch], return_state=True)
    stem_big = jax.device_get(state_big.batch_stats["backbone"]["stem"]["conv1"]["bn"])
    stem_acc = jax.device_get(state_acc.batch_stats["backbone"]["stem"]["conv1"]["bn"])
    np.testing.assert_allclose(stem_acc["mean"], stem_big["mean"], rtol=1e-5, atol=1e-6)
    assert np.all(stem_acc["var"] <= stem_big["var"] + 1e-6)
    assert np.any(stem_acc["var"] < stem_big["var"] - 1e-4)  # the between-micro-batch part


def test_indivisible_micro_batches_are_a_clear_error(tiny_config, num_devices):
    with pytest.raises(ValueError, match="grad_accum_steps x devices = 3 x 8"):
        accumulation.check_accumulation(16, 3, mesh_lib.create_mesh())
    tiny_config.grad_accum_steps = 2  # batch 8 = 2 micro-batches of 4 on 8 devices
    with pytest.raises(ValueError, match="multiple of config.grad_accum_steps"):
        train_and_evaluate(tiny_config, "/tmp/never_written_deeplab_accum")
