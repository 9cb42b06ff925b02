"""Trained models for evaluation and prediction: from a workdir's checkpoints or converted weights."""

import os

from absl import logging

from deeplab_jax import checkpoint, sharding, train_state


def load_trained(config, workdir):
    """(model, variables, descriptor, mesh, step) from the newest checkpoint in workdir."""
    from deeplab_jax.train import INIT_IMAGE_SIZE

    mesh = sharding.create_mesh()
    descriptor = train_state.dataset_descriptor(config)
    model = train_state.create_model(config, descriptor, for_eval=True)
    tx, _ = train_state.create_optimizer(config, model, INIT_IMAGE_SIZE)
    abstract, _ = train_state.abstract_and_sharding(model, tx, INIT_IMAGE_SIZE, mesh)
    manager = checkpoint.create_manager(workdir)
    state, _, step = checkpoint.restore_latest(manager, abstract)
    manager.close()
    if state is None:
        raise FileNotFoundError(
            f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: train first with "
            f"python -m deeplab_jax.main --config=... --workdir={workdir}, or pass --weights=DIR "
            "(converted published weights)")
    logging.info("restored the checkpoint of step %d from %s", step, workdir)
    return model, state.variables(), descriptor, mesh, step


def load_converted(config, weights_dir):
    """(model, variables, descriptor) from `python -m deeplab_jax.weights.convert` output."""
    from deeplab_jax import weights

    model, variables = weights.load_model(weights_dir)
    descriptor = train_state.dataset_descriptor(config)
    return model, variables, descriptor
