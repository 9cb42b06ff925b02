"""Training pieces for tests: a first batch of the tiny demo data, a state, jitted steps."""

import jax
import numpy as np

from deeplab_jax import experiment, losses
from deeplab_jax.data import input_pipeline
from deeplab_jax.parallel import mesh as mesh_lib
from deeplab_jax.train.state import setup_state
from deeplab_jax.train.step import make_train_step


def first_batch(config, batch_size=None):
    """The first training batch of `config`'s data (crop 129, seed 0), as host arrays."""
    descriptor = experiment.dataset_descriptor(config)
    source = experiment.load_source(config, descriptor, descriptor.train_split)
    return next(iter(input_pipeline.create_train_dataset(
        source, global_batch_size=batch_size or config.batch_size, crop_size=(129, 129),
        seed=0)))


def build(config, devices=None, seed=0):
    """(setup, state, mesh): the StateSetup of config's model and a fresh state."""
    mesh = mesh_lib.create_mesh(devices)
    model = experiment.create_model(config)
    setup = setup_state(config, model, mesh)
    return setup, setup.create(seed), mesh


def jit_step(config, setup, mesh):
    """config's train step, jitted with the state's shardings (not donated)."""
    descriptor = experiment.dataset_descriptor(config)
    loss_config = losses.LossConfig.from_config(config.loss, descriptor.ignore_label)
    step = make_train_step(setup.model, setup.tx, setup.schedule, loss_config=loss_config,
                           accum_steps=int(config.grad_accum_steps), mesh=mesh)
    return jax.jit(step, in_shardings=(setup.shardings, mesh_lib.batch_sharding(mesh),
                                       mesh_lib.replicated(mesh)),
                   out_shardings=(setup.shardings, mesh_lib.replicated(mesh)))


def run_steps(config, batches, devices=None, return_state=False):
    """Runs one jitted train step per batch; returns (params numpy tree, [metrics per step])."""
    setup, state, mesh = build(config, devices)
    step = jit_step(config, setup, mesh)
    history = []
    for batch in batches:
        state, metrics = step(state, mesh_lib.global_batch(batch, mesh), jax.random.key(1))
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    if return_state:
        return state, history
    return jax.device_get(state.params), history


def assert_trees_close(a, b, rtol, atol):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
