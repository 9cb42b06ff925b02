"""One train step of the tiny demo config through the library's own pieces (shared by tests)."""

import jax
import numpy as np

from deeplab_jax import sharding, train, train_state
from deeplab_jax.data import input_pipeline, sources


def first_batch(config, batch_size=None):
    descriptor = train_state.dataset_descriptor(config)
    source = sources.load_split(descriptor, "train", config.dataset.data_dir)
    return next(iter(input_pipeline.create_train_dataset(
        source, global_batch_size=batch_size or config.batch_size, crop_size=(129, 129),
        seed=0)))


def build(config, devices=None):
    """(model, tx, schedule, mesh, shardings, state) with the config's sharding rules."""
    mesh = sharding.create_mesh(devices)
    descriptor = train_state.dataset_descriptor(config)
    model = train_state.create_model(config, descriptor)
    tx, schedule = train_state.create_optimizer(config, model, train.INIT_IMAGE_SIZE)
    rules, min_size = train_state.sharding_rules(config)
    _, shardings = train_state.abstract_and_sharding(model, tx, train.INIT_IMAGE_SIZE, mesh,
                                                     rules, min_size)
    state = train_state.create_state(model, tx, train.INIT_IMAGE_SIZE, mesh, 0, rules, min_size)
    return model, tx, schedule, mesh, shardings, state


def run_steps(config, batches, devices=None, return_state=False):
    """Runs one jitted train step per batch; returns (params numpy tree, [metrics per step])."""
    model, tx, schedule, mesh, shardings, state = build(config, devices)
    step = jax.jit(train.make_train_step(model, tx, schedule, config, mesh),
                   in_shardings=(shardings, sharding.batch_sharding(mesh),
                                 sharding.replicated(mesh)),
                   out_shardings=(shardings, sharding.replicated(mesh)))
    history = []
    for batch in batches:
        state, metrics = step(state, sharding.global_batch(batch, mesh), jax.random.key(1))
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    if return_state:
        return state, history
    return jax.device_get(state.params), history


def assert_trees_close(a, b, rtol, atol):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
