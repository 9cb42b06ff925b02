"""Parameter sharding rules: regex over parameter paths -> PartitionSpec (replicated by default).

The batch is always split over the mesh's 'data' axis (`mesh.py`). Parameters are replicated
unless a rule says otherwise (rules by regex from the config, as big_vision does). A rule
is `(regex, spec)`, searched against '/'-joined parameter paths such as
'backbone/layer5/block1/conv3x3/conv/kernel'; the first matching rule wins. `spec` is

- a tuple with one entry per dimension, each a mesh axis name or None
  (`('^head/', (None, None, None, 'data'))` splits the classifiers' output channels);
- 'fsdp': split the largest dimension that the 'data' axis divides (ties: the last one, the output
  channels of an HWIO kernel), for parameters with at least `fsdp_min_size` elements; smaller or
  indivisible ones stay replicated. Over the same axis as the batch this is FSDP / ZeRO-3: each
  device keeps 1/n of the parameters and of their optimizer state, and XLA all-gathers a weight
  where it is used and reduce-scatters its gradient;
- 'replicate'.

The optimizer state follows its parameter (optax.tree_map_params finds the parameter-shaped
leaves: momentum, Adam moments); scalars and BatchNorm statistics are replicated. Everything is
computed from shapes alone (abstract trees), so the state is born sharded (`train/state.py`).
"""

import dataclasses
import re

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from deeplab_jax.parallel.mesh import DATA_AXIS, replicated as replicated_sharding


def path_string(path) -> str:
    """'backbone/layer2/block1/conv/kernel' for a jax.tree_util key path."""
    return jax.tree_util.keystr(path, simple=True, separator="/")

DEFAULT_FSDP_MIN_SIZE = 2 ** 14  # elements; smaller parameters cost more to gather than they save

FSDP = "fsdp"
REPLICATE = "replicate"
FSDP_RULES = ((".*", FSDP),)


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """(regex, spec) rules, first match wins, and the size below which 'fsdp' replicates."""

    rules: tuple = ()
    fsdp_min_size: int = DEFAULT_FSDP_MIN_SIZE

    def __bool__(self):
        return bool(self.rules)

    @classmethod
    def from_config(cls, config) -> "ShardingRules":
        """config.sharding's rules, with ('.*', 'fsdp') appended when config.sharding.fsdp."""
        section = config.get("sharding")
        if section is None:
            return cls()
        rules = tuple((str(pattern), _spec_value(spec)) for pattern, spec in section.rules)
        if section.fsdp:
            rules += FSDP_RULES
        return cls(rules=rules, fsdp_min_size=int(section.fsdp_min_size))


def _spec_value(spec):
    if isinstance(spec, str):
        return spec
    return tuple(None if axis in (None, "None", "") else str(axis) for axis in spec)


def fsdp_spec(shape, axis_size: int, min_size: int) -> P:
    """Split the largest dimension divisible by axis_size (the last of equals); else replicate."""
    size = 1
    for dim in shape:
        size *= dim
    if axis_size <= 1 or size < min_size:
        return P()
    best = None
    for index, dim in enumerate(shape):
        if dim % axis_size == 0 and (best is None or dim >= shape[best]):
            best = index
    if best is None:
        return P()
    return P(*([None] * best + [DATA_AXIS]))


def _check_spec(spec, shape, mesh, name, pattern):
    if len(spec) > len(shape):
        raise ValueError(
            f"sharding rule {pattern!r} gives {name} (shape {shape}) the spec {tuple(spec)} with "
            f"{len(spec)} entries for {len(shape)} dimensions; give one entry per dimension")
    for axis, dim in zip(spec, shape):
        if axis is None:
            continue
        if axis not in mesh.shape:
            raise ValueError(
                f"sharding rule {pattern!r}: mesh axis {axis!r} does not exist; the mesh has "
                f"{tuple(mesh.shape)}")
        if dim % mesh.shape[axis]:
            raise ValueError(
                f"sharding rule {pattern!r} splits a dimension of size {dim} of {name} (shape "
                f"{shape}) over {mesh.shape[axis]} devices of axis {axis!r}, which does not divide "
                "it; use 'fsdp' (picks a divisible dimension) or another spec")


def param_specs(abstract_params, sharding_rules: ShardingRules, mesh):
    """PartitionSpec per parameter leaf (same tree), from the first matching rule; else P()."""
    compiled = []
    for rule in sharding_rules.rules:
        if len(rule) != 2:
            raise ValueError(f"sharding rule {rule!r} must be a (regex, spec) pair")
        pattern, spec = rule
        try:
            compiled.append((re.compile(pattern), pattern, spec))
        except re.error as error:
            raise ValueError(f"sharding rule regex {pattern!r} is invalid: {error}") from None
        if isinstance(spec, str) and spec not in (FSDP, REPLICATE):
            raise ValueError(
                f"sharding rule {pattern!r}: spec {spec!r} is unknown; use 'fsdp', 'replicate' or "
                "a tuple of mesh axis names / None, one per dimension")
    data_size = mesh.shape.get(DATA_AXIS, 1)

    def spec_for(path, leaf):
        name = path_string(path)
        for regex, pattern, spec in compiled:
            if regex.search(name):
                if spec == REPLICATE:
                    return P()
                if spec == FSDP:
                    return fsdp_spec(leaf.shape, data_size, sharding_rules.fsdp_min_size)
                _check_spec(spec, leaf.shape, mesh, name, pattern)
                return P(*spec)
        return P()

    return jax.tree_util.tree_map_with_path(spec_for, abstract_params)


def state_shardings(abstract_state, tx, mesh, sharding_rules: ShardingRules = ShardingRules()):
    """NamedSharding tree for a TrainState: params by rule, optimizer state like its parameter."""
    replicated = replicated_sharding(mesh)
    specs = param_specs(abstract_state.params, sharding_rules, mesh)
    params = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                          is_leaf=lambda x: isinstance(x, P))
    if sharding_rules:
        opt_state = optax.tree_map_params(
            tx, lambda _, sharding: sharding, abstract_state.opt_state, params,
            transform_non_params=lambda _: replicated,
            is_leaf=lambda x: isinstance(x, NamedSharding))
    else:
        opt_state = jax.tree.map(lambda _: replicated, abstract_state.opt_state)
    return abstract_state.replace(
        step=replicated, params=params,
        batch_stats=jax.tree.map(lambda _: replicated, abstract_state.batch_stats),
        opt_state=opt_state)


def describe(shardings) -> dict:
    """'a/b/c' -> spec string of every non-replicated leaf (for logs and tests)."""
    out = {}
    for path, sharding in jax.tree_util.tree_flatten_with_path(
            shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0]:
        if isinstance(sharding, NamedSharding) and any(a is not None for a in sharding.spec):
            out[path_string(path)] = str(sharding.spec)
    return out
