"""The training state: its creation (born sharded) and loading a trained model from a workdir.

State is born sharded: `jax.eval_shape` gives the abstract state, the shardings come from it, and
`jax.jit(init, out_shardings=...)` creates the state directly in place, never materialising it on
one device first. Parameters are replicated over the 'data' axis unless sharding rules
(config.sharding, `parallel/partitioning.py`) split them; optimizer state follows its parameter.
"""

import dataclasses
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from deeplab_jax import experiment, storage
from deeplab_jax.data.datasets import DatasetDescriptor
from deeplab_jax.parallel import mesh as mesh_lib
from deeplab_jax.parallel import partitioning
from deeplab_jax.train import checkpoint, init_weights, optim, run_config

# Parameters do not depend on the image size: the state is traced at a small dummy size.
INIT_IMAGE_SIZE = (65, 65)


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


def _init_variables(model, rng):
    params_rng, dropout_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, *INIT_IMAGE_SIZE, 3), jnp.uint8)
    return model.init({"params": params_rng, "dropout": dropout_rng}, dummy, train=False)


def create_optimizer(config, model):
    """(optax transformation, schedule) for the model's parameter tree (known from shapes alone)."""
    abstract = jax.eval_shape(lambda: _init_variables(model, jax.random.key(0)))
    return optim.create_optimizer(config.optim, abstract["params"], config.num_steps)


@dataclasses.dataclass(frozen=True)
class StateSetup:
    """Everything about a model's training state that is known before it exists."""

    model: Any
    tx: Any  # optax.GradientTransformation
    schedule: Any  # step -> learning rate
    mesh: jax.sharding.Mesh
    sharding_rules: partitioning.ShardingRules
    abstract: TrainState  # ShapeDtypeStruct leaves carrying their shardings (restore target)
    shardings: TrainState  # NamedSharding per leaf

    def create(self, seed: int) -> TrainState:
        """A fresh state, initialised in place with its shardings (the key is data, so the
        compiled init is reused across seeds)."""
        init = jax.jit(_state_init_fn(self.model, self.tx), out_shardings=self.shardings)
        return init(jax.random.key(seed))


def _state_init_fn(model, tx):
    def init(rng):
        variables = _init_variables(model, rng)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))
    return init


def setup_state(config, model, mesh) -> StateSetup:
    """The optimiser, abstract state and shardings of `model` under `config` on `mesh`."""
    tx, schedule = create_optimizer(config, model)
    rules = partitioning.ShardingRules.from_config(config)
    abstract = jax.eval_shape(_state_init_fn(model, tx), jax.random.key(0))
    shardings = partitioning.state_shardings(abstract, tx, mesh, rules)
    abstract = jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract,
        shardings)
    return StateSetup(model=model, tx=tx, schedule=schedule, mesh=mesh, sharding_rules=rules,
                      abstract=abstract, shardings=shardings)


def parameter_count(params) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


class TrainedModel(NamedTuple):
    model: Any
    variables: dict
    descriptor: DatasetDescriptor
    mesh: jax.sharding.Mesh
    step: int


def load_trained(config, workdir) -> TrainedModel:
    """The evaluation model and the variables of the newest checkpoint in `workdir` (local or
    gs://).

    The model is built in the layout the run trained with (its config.json, `init_weights.
    adopt_run_layout`), so callers pass the config as the user gave it. The checkpoint is verified
    (readable, unchanged since it was written, finite): a damaged or diverged one raises
    `checkpoint.CheckpointError` / `finite.NonFiniteError` naming it, rather than serving wrong or
    NaN weights (a model with NaN weights predicts class 0 everywhere).
    """
    config = init_weights.adopt_run_layout(config, workdir)
    mesh = mesh_lib.create_mesh()
    descriptor = experiment.dataset_descriptor(config)
    model = experiment.create_model(config, descriptor, for_eval=True)
    setup = setup_state(config, model, mesh)
    directory = storage.as_path(workdir) / "checkpoints"
    step = None
    if directory.exists():
        checkpoints = checkpoint.Checkpoints(workdir, read_only=True)
        try:
            step = checkpoints.latest_step()
            if step is not None:
                state, _ = checkpoints.restore_step(step, setup.abstract)
        except checkpoint.CheckpointLayoutError as error:  # name the config fields that differ
            raise checkpoint.CheckpointLayoutError(
                run_config.explain(error, workdir, config)) from None
        finally:
            checkpoints.close()
    if step is None:
        raise FileNotFoundError(
            f"no checkpoint in {directory}: train first with "
            f"python -m deeplab_jax.main --config=... --workdir={workdir}, or pass --weights=DIR "
            "(converted published weights)")
    logging.info("restored the checkpoint of step %d from %s", step, directory)
    return TrainedModel(model, state.variables(), descriptor, mesh, step)
