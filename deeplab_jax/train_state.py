"""The training state and what train, evaluate and predict share: model, data set, state creation.

State is born sharded (STYLE.md habit 3): `jax.eval_shape` gives the abstract state, the shardings
come from it, and `jax.jit(init, out_shardings=...)` creates the state directly in place, never
materialising it on one device first. Parameters are replicated over the 'data' axis unless sharding
rules (config.sharding, partitioning.py) split them; optimizer state follows its parameter.
"""

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from deeplab_jax import model_config, models, optim, partitioning, sharding
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
    """Factory overrides that differ from the model's defaults; remat=True + config.model.
    remat_policy -> remat=<policy name> (models.layers.remat_policy)."""
    overrides = model_config.effective_overrides(config.model.name,
                                                 config.model.overrides.to_dict())
    policy = config.model.get("remat_policy", "")
    if policy and overrides.get("remat") is True:
        models.layers.remat_policy(policy)  # a clear error for an unknown name, before tracing
        overrides["remat"] = policy
    return overrides


def create_model(config, descriptor=None, for_eval=False):
    """The configured model; `for_eval` applies config.eval.output_stride (v3 paper §4.3: train at
    OS 16, evaluate at OS 8 with the same weights; parameters do not depend on it)."""
    descriptor = descriptor or dataset_descriptor(config)
    overrides = model_overrides(config)
    eval_stride = int(config.eval.get("output_stride", 0) or 0)
    if for_eval and eval_stride:
        overrides["output_stride"] = eval_stride
    return models.get_model(config.model.name, descriptor.num_classes, **overrides)


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


def sharding_rules(config):
    """(rules, fsdp_min_size) of config.sharding (partitioning.py); () = all replicated."""
    section = config.get("sharding")
    min_size = int(section.fsdp_min_size) if section is not None else 2 ** 14
    return partitioning.rules_from_config(config), min_size


def abstract_and_sharding(model, tx, image_size, mesh, rules=(), fsdp_min_size=2 ** 14):
    """(abstract TrainState, its sharding tree): parameters by `rules`, replicated by default."""
    abstract = jax.eval_shape(_init_fn(model, tx, image_size), init_rng(0))
    shardings = partitioning.state_shardings(abstract, tx, mesh, rules, fsdp_min_size)
    abstract = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract,
        shardings)
    return abstract, shardings


def create_state(model, tx, image_size, mesh, seed, rules=(), fsdp_min_size=2 ** 14):
    _, shardings = abstract_and_sharding(model, tx, image_size, mesh, rules, fsdp_min_size)
    init = jax.jit(_init_fn(model, tx, image_size), out_shardings=shardings)
    return init(init_rng(seed))


def parameter_count(params) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))
