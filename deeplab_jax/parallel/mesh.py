"""Device mesh, shardings, and process-local batches turned into global arrays.

jax.jit with explicit NamedSharding (the pjit way; pmap is in maintenance): the batch is split over
a 'data' axis of all devices and the training state is replicated. Under jit, BatchNorm statistics
over the sharded batch are already global (synchronised BN without an axis name). Axes are created as
AxisType.Auto (classic sharding propagation): newer JAX makes `jax.make_mesh` axes Explicit by
default, which changes typing rules this code does not need.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def create_mesh(devices=None) -> jax.sharding.Mesh:
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
    """Leading (batch) axis split over the 'data' axis; other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh) -> None:
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the {devices} devices of "
            f"the mesh; set config.batch_size (or config.eval.batch_size) to a multiple of "
            f"{devices}")


def global_batch(local_batch: dict, mesh) -> dict:
    """Process-local numpy batch -> global jax arrays sharded along the batch axis.

    Non-numeric leaves (image ids) stay on the host and are dropped from the device batch.
    """
    sharding = batch_sharding(mesh)
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        if value.dtype.kind in "biuf":
            out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out
