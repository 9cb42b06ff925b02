"""Sharding rules on 8 fake devices: specs by hand, parameters really split, same numbers."""

import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from deeplab_jax.parallel import mesh as mesh_lib
from deeplab_jax.parallel import partitioning
from deeplab_jax.parallel.partitioning import ShardingRules
from deeplab_jax.train import checkpoint
from deeplab_jax.train.loop import train_and_evaluate
from tests.helpers import training
from tests.helpers.training import assert_trees_close, first_batch, run_steps


def _abstract(shape):
    return jax.ShapeDtypeStruct(shape, np.float32)


def test_rules_give_hand_computed_specs(num_devices):
    mesh = mesh_lib.create_mesh()
    params = {"backbone": {"conv": {"kernel": _abstract((3, 3, 16, 64))},
                           "bn": {"scale": _abstract((64,))},
                           "odd": {"kernel": _abstract((3, 3, 5, 7))}},
              "head": {"c0": {"kernel": _abstract((3, 3, 64, 24)), "bias": _abstract((24,))}}}
    rules = (("^head/.*kernel$", (None, None, None, "data")), ("bias$", "replicate"),
             (".*", "fsdp"))
    specs = partitioning.param_specs(params, ShardingRules(rules, fsdp_min_size=100), mesh)
    assert specs["head"]["c0"]["kernel"] == P(None, None, None, "data")
    assert specs["head"]["c0"]["bias"] == P()
    # fsdp: the largest dimension divisible by 8 (64 of HWIO), last of equals.
    assert specs["backbone"]["conv"]["kernel"] == P(None, None, None, "data")
    assert specs["backbone"]["bn"]["scale"] == P()  # 64 elements < fsdp_min_size
    assert specs["backbone"]["odd"]["kernel"] == P()  # no dimension divisible by 8
    assert partitioning.fsdp_spec((16, 8), 8, 1) == P("data")  # 16 > 8
    assert partitioning.fsdp_spec((8, 8), 8, 1) == P(None, "data")  # tie: the last one
    assert partitioning.param_specs(params, ShardingRules(), mesh)["head"]["c0"]["kernel"] == P()


@pytest.mark.parametrize("rule, message", [
    (("^head/", (None, None, None, "data", None)), "one entry per dimension"),
    (("odd", (None, None, None, "data")), "does not divide"),
    (("^head/", (None, None, None, "model")), "mesh axis 'model' does not exist"),
    (("(", "fsdp"), "regex"),
    (("x", "shard"), "unknown"),
])
def test_bad_rules_are_clear_errors(rule, message, num_devices):
    params = {"odd": {"kernel": _abstract((3, 3, 5, 7))}, "head": {"k": _abstract((1, 1, 8, 16))}}
    with pytest.raises(ValueError, match=message):
        partitioning.param_specs(params, ShardingRules((rule,)), mesh_lib.create_mesh())


def _fsdp(config):
    config.optim.warmup_steps = 0
    config.sharding.fsdp = True
    config.sharding.fsdp_min_size = 256
    return config


def test_fsdp_parameters_are_split_and_the_step_matches_replicated(tiny_config, num_devices):
    config = _fsdp(tiny_config)
    batch = first_batch(config)
    state, metrics_fsdp = run_steps(config, [batch], return_state=True)
    split = {name: leaf for name, leaf in _named(state.params).items()
             if any(axis is not None for axis in leaf.sharding.spec)}
    # Conv kernels of >= 256 weights (8 or 16 output channels) are split; the 1x1 shortcuts
    # (8 x 16 = 128 weights) and all BN vectors stay whole.
    named = _named(state.params)
    big = {n for n, leaf in named.items() if n.endswith("kernel") and leaf.size >= 256}
    assert len(big) >= 8 and set(split) == big
    for name, leaf in split.items():
        shard_shapes = {shard.data.shape for shard in leaf.addressable_shards}
        expected = list(leaf.shape)
        expected[list(leaf.sharding.spec).index("data")] //= num_devices
        assert shard_shapes == {tuple(expected)}, name  # each device holds 1/8
    # Adam's moments follow their parameters.
    mu = _named(state.opt_state[0].mu)
    assert set(mu) == set(named)
    for name, leaf in mu.items():
        assert leaf.sharding.spec == named[name].sharding.spec, name

    config.sharding.fsdp = False
    params_repl, metrics_repl = run_steps(config, [batch])
    assert metrics_fsdp[0]["loss"] == pytest.approx(metrics_repl[0]["loss"], rel=1e-5)
    assert_trees_close(jax.device_get(state.params), params_repl, rtol=1e-4, atol=1e-6)


def _named(tree):
    return {partitioning.path_string(path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_checkpoint_restores_onto_the_sharded_layout(tiny_config, tmp_path, num_devices):
    """A replicated run's checkpoint resumes under FSDP: same values, split layout, evaluates."""
    config = tiny_config
    config.optim.warmup_steps = 0
    config.num_steps = 2
    config.eval.every_steps = config.checkpoint_every_steps = 2
    config.eval.max_examples = 8
    config.eval.num_overlays = 0
    config.predict.num_images = 0
    workdir = str(tmp_path / "run")
    train_and_evaluate(config, workdir)

    _fsdp(config)
    setup, _, _ = training.build(config)
    shardings = setup.shardings
    manager = checkpoint.create_manager(workdir)
    restored, _, step = checkpoint.restore_latest(manager, setup.abstract)
    manager.close()
    assert step == 2
    replicated_params = _final_replicated_params(workdir)
    for name, leaf in _named(restored.params).items():
        assert leaf.sharding.spec == _named(shardings.params)[name].spec
        np.testing.assert_array_equal(np.asarray(leaf), replicated_params[name])
    assert any("data" in tuple(leaf.sharding.spec) for leaf in jax.tree.leaves(restored.params))

    # The training loop itself resumes under FSDP and evaluates (gathered parameters).
    config.num_steps = 3
    config.eval.every_steps = 3
    results = train_and_evaluate(config, workdir)
    assert 0.0 <= results["miou"] <= 1.0
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "3"


def _final_replicated_params(workdir):
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                    item_names=("state", "data"))
    restored = manager.restore(manager.latest_step(),
                               args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return {k: np.asarray(v) for k, v in _named(restored["state"]["params"]).items()}
