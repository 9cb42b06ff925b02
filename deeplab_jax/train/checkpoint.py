"""orbax checkpoints of the training state together with the input iterator's position.

One CheckpointManager per workdir (<workdir>/checkpoints). Each step directory holds two items:
'state' (parameters, BatchNorm statistics, optimizer state, step; StandardSave) and 'data' (the
grain iterator state, a small JSON dict), so a resumed run continues with exactly the batches an
uninterrupted run would have seen. Restoring reads into the abstract state's shardings, so a
checkpoint written on one device count restores onto another, and a replicated one onto sharded
parameters (config.sharding; tests/parallel/test_partitioning.py).

Multi-process jobs: every process calls `save` and `restore_latest` with its global arrays; orbax
writes each array shard once and synchronises the processes. The 'data' item is the same in every
process (each advances its own shard of the data by the same number of batches), so the copy the
primary process writes restores them all (tests/parallel/test_multihost.py).
"""

import os

import orbax.checkpoint as ocp
from absl import logging


def create_manager(workdir: str, keep: int = 3, save_interval_steps: int = 1):
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=save_interval_steps, create=True)
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))


def save(manager, step: int, state, data_state: dict | None, force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    items["data"] = ocp.args.JsonSave(data_state or {})
    saved = manager.save(step, args=ocp.args.Composite(**items), force=force)
    if saved:
        logging.info("saved checkpoint at step %d in %s", step, manager.directory)
    return saved


def restore_latest(manager, abstract_state):
    """Returns (state, data_state, step) of the newest checkpoint, or (None, None, 0) if none."""
    step = manager.latest_step()
    if step is None:
        return None, None, 0
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    logging.info("restored checkpoint of step %d from %s", step, manager.directory)
    return restored["state"], restored["data"], step
