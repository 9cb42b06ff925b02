"""A few training steps of every new variant (v3, v3+, Xception-65, PointRend, the demo v1) on 8
fake devices.

The steps are `deeplab_jax.train.step.make_train_step` (the loop's jitted step: batch sharded on the
'data' axis, state replicated) with the demo config's optimiser; for PointRend the step's loss is
`losses.pointrend_loss` of the point head's outputs. The
architectures are the registered ones at tiny widths; each variant repeats one fixed batch, so the
loss must fall. Marked slow: mostly XLA compilation.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import demo as demo_config
from deeplab_jax import losses
from deeplab_jax.data import datasets
from deeplab_jax.parallel import mesh as mesh_lib
from tests.helpers import training

pytestmark = pytest.mark.slow

TINY_HEAD = dict(aspp_features=8, decoder_features=8, decoder_low_level_features=4)
TINY_RESNET = dict(stage_sizes=(1, 1, 1, 3), widths=(4, 8, 8, 16), **TINY_HEAD)
# The demo v3/v3+ models are the same family at other widths: v3+ demo trains below with its
# point head (test_pointrend_train_steps_on_8_devices), the v3 head is deeplab_v3_resnet50's.
VARIANTS = {
    "deeplab_v3_resnet50": TINY_RESNET,
    "deeplab_v3plus_resnet101": TINY_RESNET,
    "deeplab_v3plus_xception65": dict(width_multiplier=1 / 16, middle_repeats=1, **TINY_HEAD),
}
STEPS = 4


def _setup(name, overrides, num_devices):
    config = demo_config.get_config("tiny")
    config.model.name = name
    config.model.overrides = ml_collections.ConfigDict(overrides)
    config.optim.warmup_steps = 0
    config.optim.schedule = "constant"
    descriptor = datasets.get_dataset("demo")
    setup, state, mesh = training.build(config, jax.devices()[:num_devices])
    return config, setup, state, _fixed_batch(mesh, descriptor.num_classes), mesh


def _fixed_batch(mesh, num_classes):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, num_classes, size=(8, 65, 65))
    labels[:, :5] = 255  # an ignored band, as the data set's boundaries
    return mesh_lib.global_batch(
        {"image": rng.integers(0, 256, size=(8, 65, 65, 3), dtype=np.uint8),
         "label": labels.astype(np.int32)}, mesh)


def _train(config, setup, mesh, state, batch):
    """(jitted step, state, losses) after STEPS steps on the fixed batch; the loss must fall."""
    step = training.jit_step(config, setup, mesh)
    history = []
    for _ in range(STEPS):
        state, metrics = step(state, batch, jax.random.key(1))
        history.append(float(metrics["loss"]))
    assert all(np.isfinite(history)) and history[-1] < history[0], history
    return step, state, history


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_train_steps_on_8_devices(name, num_devices):
    config, setup, state, batch, mesh = _setup(name, VARIANTS[name], num_devices)
    assert len(batch["image"].sharding.device_set) == num_devices
    stats_before = jax.device_get(state.batch_stats)
    _, state, _ = _train(config, setup, mesh, state, batch)
    assert int(state.step) == STEPS
    # BatchNorm is trained in v3 (§4.1): the running statistics moved.
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), stats_before,
                         jax.device_get(state.batch_stats))
    assert any(jax.tree.leaves(moved))


def test_pointrend_train_steps_on_8_devices(num_devices):
    overrides = dict(pointrend=True, pointrend_points=64, pointrend_subdivision_points=256)
    config, setup, state, batch, mesh = _setup("deeplab_v3plus_demo", overrides, num_devices)
    model = setup.model
    assert "point_head" in state.params
    head_before = jax.device_get(state.params["point_head"])
    step, state, _ = _train(config, setup, mesh, state, batch)
    # The step trains the point head (pointrend_loss), not only the coarse logits.
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), head_before,
                         jax.device_get(state.params["point_head"]))
    assert all(jax.tree.leaves(moved))
    # The step's loss is pointrend_loss of the model's point outputs (same rng derivation).
    # Jitted: run op by op, this forward and loss took 22 of the test's 52 s.
    dropout_rng, points_rng = jax.random.split(jax.random.fold_in(jax.random.key(1), STEPS))
    loss_config = losses.LossConfig.from_config(config.loss, 255)

    @jax.jit
    def point_loss(variables, images, labels, points_rng, dropout_rng):
        outputs, _ = model.apply(variables, images, train=True, return_points=True,
                                 mutable=["batch_stats"],
                                 rngs={"points": points_rng, "dropout": dropout_rng})
        return losses.pointrend_loss(outputs, labels, loss_config)

    expected = point_loss(state.variables(), batch["image"], batch["label"], points_rng,
                          dropout_rng)
    state, metrics = step(state, batch, jax.random.key(1))
    np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-4)
    # Inference with the trained variables: subdivided logits at the input resolution, and the
    # evaluator's upsampling is then the identity (output stride 1).
    logits = jax.jit(model.apply)(state.variables(), batch["image"])
    assert logits.shape == (8, 65, 65, datasets.get_dataset("demo").num_classes)
    assert losses.infer_output_stride(65, logits.shape[1]) == 1
    assert jnp.all(jnp.isfinite(logits))


def test_demo_v1_recipe_trains_without_batchnorm(num_devices):
    """configs/demo.py:v1 (VGG-16 without BatchNorm, its learning rate and dropout), narrower."""
    config = demo_config.get_config("v1")
    assert config.model.name == "deeplab_v1_demo" and config.model.overrides.dropout_rate == 0.0
    config.model.overrides.widths = (4, 4, 8, 8, 8)
    config.model.overrides.fc_width = 16
    config.optim.warmup_steps = 0
    config.optim.schedule = "constant"
    setup, state, mesh = training.build(config, jax.devices()[:num_devices])
    assert not state.batch_stats  # VGG-16 has no BatchNorm
    _train(config, setup, mesh, state, _fixed_batch(mesh, datasets.get_dataset("demo").num_classes))
