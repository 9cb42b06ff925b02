"""The training state and what train, evaluate and predict share: model, data set, state creation.

State is born sharded (STYLE.md habit 3): `jax.eval_shape` gives the abstract state, the shardings
come from it, and `jax.jit(init, out_shardings=...)` creates the state directly in place, never
materialising it on one device first. Parameters are replicated over the 'data' axis.
"""

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from deeplab_jax import model_config, models, optim, sharding
from deeplab_jax.data import datasets, sources


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    def variables(self):
        variables = {"params": self.params}
        if self.batch_stats:
            variables["batch_stats"] = self.batch_stats
        return variables


def dataset_descriptor(config) -> datasets.DatasetDescriptor:
    """The config's data set descriptor, with the config's split / builder overrides applied."""
    descriptor = datasets.get_dataset(config.dataset.name, config.dataset.manual_dir or None)
    changes = {}
    if config.dataset.tfds_name:
        changes["tfds_name"] = config.dataset.tfds_name
    if config.dataset.train_split:
        changes["train_split"] = config.dataset.train_split
    if config.dataset.eval_split:
        changes["eval_split"] = config.dataset.eval_split
    return dataclasses.replace(descriptor, **changes) if changes else descriptor


def load_source(config, descriptor, split):
    """Random-access examples of one split, building the data set first if needed."""
    return sources.load_split(descriptor, split, config.dataset.data_dir or None,
                              config.dataset.manual_dir or None, skip_bad=config.dataset.skip_bad,
                              full_data=config.dataset.full_data)


def model_overrides(config) -> dict:
    return model_config.effective_overrides(config.model.name, config.model.overrides.to_dict())


def create_model(config, descriptor=None):
    descriptor = descriptor or dataset_descriptor(config)
    return models.get_model(config.model.name, descriptor.num_classes, **model_overrides(config))


def crop_size(config, descriptor):
    return tuple(config.input.crop_size or descriptor.crop_size)


def eval_size(config, descriptor):
    return tuple(config.eval.size or descriptor.eval_size)


def init_rng(seed: int):
    # Parameter init under jit: the key is data, so the compiled init is reused across seeds.
    return jax.random.key(seed)


def _init_fn(model, tx, image_size):
    def init(rng):
        params_rng, dropout_rng = jax.random.split(rng)
        dummy = jnp.zeros((1, *image_size, 3), jnp.uint8)
        variables = model.init({"params": params_rng, "dropout": dropout_rng}, dummy, train=False)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}),
                          opt_state=tx.init(params))
    return init


def create_optimizer(config, model, image_size):
    """The optax transformation for the model's parameter tree (known from shapes alone)."""
    abstract = jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                           jnp.zeros((1, *image_size, 3), jnp.uint8), train=False))
    return optim.create_optimizer(config.optim, abstract["params"], config.num_steps)


def abstract_and_sharding(model, tx, image_size, mesh):
    """(abstract TrainState, its sharding tree): everything replicated."""
    abstract = jax.eval_shape(_init_fn(model, tx, image_size), init_rng(0))
    shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
    abstract = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract,
        shardings)
    return abstract, shardings


def create_state(model, tx, image_size, mesh, seed):
    _, shardings = abstract_and_sharding(model, tx, image_size, mesh)
    init = jax.jit(_init_fn(model, tx, image_size), out_shardings=shardings)
    return init(init_rng(seed))


def parameter_count(params) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))
