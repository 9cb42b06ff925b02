"""orbax checkpoints of the training state with the input iterator's position, verified on restore.

One `Checkpoints` per workdir (<workdir>/checkpoints, local or gs://). Each step directory holds
three items: 'state' (parameters, BatchNorm statistics, optimizer state, step; StandardSave),
'data' (the grain iterator state, a small JSON dict), so a resumed run continues with exactly the
batches an uninterrupted run would have seen, and 'integrity' (the state's fingerprint,
`fingerprint.py`). Restoring reads into the abstract state's shardings, so a checkpoint written on
one device count restores onto another, and a replicated one onto sharded parameters.

Faults:
- A non-finite state is never saved (`save` checks the fingerprint's finite flag first).
- Saves are synchronous: an error (a full disk above all) is raised once, by the `save` call that
  hit it, as one `DiskFullError` naming the step and the directory; the partial step directory is
  removed and the previous checkpoint stays the latest.
- `restore_latest` (training resume) verifies each checkpoint (readable, fingerprint matches,
  finite) from the newest down, resumes from the newest intact one, and moves the ones it skipped
  to <workdir>/checkpoints_corrupt/<step>-<time> (outside orbax's directory, so `max_to_keep`
  never counts or deletes them), logging which and why. When none is intact it raises one
  `CheckpointError` listing every step and its reason, and moves nothing.
- `restore_step` (evaluation, prediction) verifies one checkpoint and raises a `CheckpointError`
  or `NonFiniteError` naming it.
- A checkpoint of another model (the config changed: widths, classes, model) is not damage: its
  metadata is compared with the expected variables before any array is read, and the
  `CheckpointLayoutError` names the variables that differ; resume stops there and moves nothing.

Multi-process jobs: every process calls `save` and `restore_latest` with its global arrays; orbax
writes each array shard once and synchronises the processes. The 'data' item is the same in every
process, so the copy the primary process writes restores them all; only the primary process
moves a damaged checkpoint aside.
"""

import time

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from deeplab_jax import storage
from deeplab_jax.finite import NonFiniteError
from deeplab_jax.train import abandoned_reads, fingerprint

ITEMS = ("state", "data", "integrity")
CORRUPT_DIR = "checkpoints_corrupt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (unreadable, altered), or no intact checkpoint at all."""


class CheckpointLayoutError(CheckpointError):
    """An intact checkpoint of another model: its parameter shapes or names differ from the
    ones the config builds. Not damage: nothing is skipped or moved aside."""


# The state's parts whose saved tree mirrors the model's variables key for key (the optimizer
# state is saved with its empty nodes dropped, so its paths do not line up with the abstract's).
_LAYOUT_PARTS = ("params", "batch_stats")
_LAYOUT_LISTED = 3


def _key_name(key):
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _layout(tree):
    """{'params/backbone/.../kernel': shape} of the model's variables in a state-like tree."""
    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [_key_name(key) for key in path]
        if names and names[0] in _LAYOUT_PARTS:
            shapes["/".join(names)] = tuple(getattr(leaf, "shape", ()))
    return shapes


def layout_differences(saved_tree, abstract_state) -> list:
    """Readable differences between the variables a checkpoint holds and the ones expected."""
    saved, expected = _layout(saved_tree), _layout(abstract_state)
    lines = []
    names = sorted(set(saved) | set(expected),
                   key=lambda name: (_LAYOUT_PARTS.index(name.split("/")[0]), name))
    for name in names:
        if name not in saved:
            lines.append(f"{name} {expected[name]} is not in the checkpoint")
        elif name not in expected:
            lines.append(f"{name} {saved[name]} is only in the checkpoint")
        elif saved[name] != expected[name]:
            lines.append(f"{name} is {saved[name]} in the checkpoint, {expected[name]} here")
    return lines


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


class Checkpoints:
    """The checkpoints of one workdir: save, verified restore with fallback, close."""

    def __init__(self, workdir, keep: int = 3, read_only: bool = False):
        self.workdir = storage.as_path(workdir)
        self.directory = self.workdir / "checkpoints"
        self.keep = keep
        self.read_only = read_only
        self.manager = self._create_manager()

    def _create_manager(self):
        # Readers (evaluation, prediction) neither create nor clean up anything; orbax's own
        # read_only option would log three warnings on every load.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep, create=not self.read_only,
            enable_async_checkpointing=False, cleanup_tmp_directories=not self.read_only)
        return ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self):
        return self.manager.latest_step()

    def all_steps(self):
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict | None, force: bool = False) -> bool:
        prints, ok = fingerprint.fingerprint(state)
        if not ok:
            raise NonFiniteError(f"refusing to save checkpoint {step} in {self.directory}: the "
                                 "training state holds NaN or inf")
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {}),
            integrity=ocp.args.JsonSave({"fingerprint": prints}))
        try:
            saved = self.manager.save(step, args=args, force=force)
        except Exception as error:  # orbax wraps the writer's OSError in several ways
            if storage.is_disk_full(error):
                self._remove_partial(step)
            storage.raise_if_disk_full(
                error, f"checkpoint {step}", self.directory,
                f"the latest complete checkpoint is step {self.latest_step()}; free space and "
                "re-run the same command to resume from it")
            raise
        if saved:
            logging.info("saved checkpoint at step %d in %s", step, self.directory)
        return saved

    def _remove_partial(self, step):
        """Deletes the temporary directory a failed save of `step` left, freeing its space."""
        if jax.process_index() != 0:
            return
        for path in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
            try:
                path.rmtree()
            except OSError as error:
                logging.warning("could not remove the partial checkpoint %s: %s", path, error)

    def restore_step(self, step: int, abstract_state):
        """(state, data_state) of checkpoint `step`, verified; raises CheckpointError or
        NonFiniteError naming the checkpoint."""
        where = f"checkpoint {step} in {self.directory}"
        step_dir = self.directory / str(step)
        # Before any read (the metadata's too): when one fails, the abandoned reads' tracebacks,
        # which would bury the one line this reports, start while orbax is still unwinding.
        abandoned_reads.quiet()
        self._check_layout(step_dir, abstract_state, where)
        has_integrity = (step_dir / "integrity").exists()
        items = {"state": ocp.args.StandardRestore(abstract_state), "data": ocp.args.JsonRestore()}
        if has_integrity:
            items["integrity"] = ocp.args.JsonRestore()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:  # orbax/tensorstore raise many types for a damaged checkpoint
            raise CheckpointError(f"{where} cannot be read ({_reason(error)})") from None
        prints, ok = fingerprint.fingerprint(restored["state"])
        if not ok:
            raise NonFiniteError(f"{where}: the weights hold NaN or inf (the run diverged); use "
                                 "an earlier checkpoint or retrain with a lower learning rate")
        if has_integrity:
            bad = fingerprint.mismatches(restored["integrity"]["fingerprint"], prints)
            if bad:
                raise CheckpointError(
                    f"{where} was altered after it was written: {len(bad)} tensors differ from "
                    f"their saved checksums ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
        else:
            logging.warning("%s has no fingerprint (written by an older version): not verified",
                            where)
        return restored["state"], restored["data"]

    @staticmethod
    def _check_layout(step_dir, abstract_state, where):
        """Raises CheckpointLayoutError when the checkpoint's metadata names other variables or
        shapes than `abstract_state`: said before orbax tries (and fails) to read the arrays.
        Unreadable metadata is left to the restore, which reports the damage."""
        try:
            saved = ocp.StandardCheckpointHandler().metadata(step_dir / "state")
        except Exception:  # noqa: BLE001 (damaged or older metadata: the restore will tell)
            return
        lines = layout_differences(saved, abstract_state)
        if lines:
            more = len(lines) - _LAYOUT_LISTED
            raise CheckpointLayoutError(
                f"{where} holds another model's variables ({len(lines)} differ: "
                + "; ".join(lines[:_LAYOUT_LISTED]) + ("; ..." if more > 0 else "")
                + "); nothing was moved or deleted")

    def restore_latest(self, abstract_state):
        """(state, data_state, step) of the newest intact checkpoint, or (None, None, 0) if there
        is none; damaged newer ones are moved aside. Raises CheckpointError if none is intact."""
        failures = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, data_state = self.restore_step(step, abstract_state)
            except CheckpointLayoutError:
                raise  # another model's checkpoint is not damaged: an older one will not fit
            except (CheckpointError, NonFiniteError) as error:
                logging.warning("skipping checkpoint %d: %s", step, error)
                failures.append((step, str(error)))
                continue
            if failures:
                self._set_aside(failures)
            logging.info("restored checkpoint of step %d from %s", step, self.directory)
            return state, data_state, step
        if failures:
            raise CheckpointError(
                f"no intact checkpoint in {self.directory}; nothing was moved or deleted. "
                + " | ".join(reason for _, reason in failures))
        return None, None, 0

    def _set_aside(self, failures):
        """Moves the damaged steps out of orbax's directory and re-creates the manager (it caches
        the step list, and would refuse to save a step below a damaged newer one)."""
        if jax.process_index() == 0:
            target_dir = self.workdir / CORRUPT_DIR
            target_dir.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step, reason in failures:
                target = target_dir / f"{step}-{stamp}"
                _move_directory(self.directory / str(step), target)
                storage.write_atomic(target / "REASON.txt", reason + "\n")
                logging.warning("moved the damaged checkpoint %d to %s (%s)", step, target,
                                reason)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("deeplab_jax: damaged checkpoints set aside")
        self.manager.close()
        self.manager = self._create_manager()

    def wait_until_finished(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


def _move_directory(source, target):
    """Moves the directory `source` to `target` (local: one rename; object stores: per object).

    An object store has no directories: `mkdir` creates nothing, so epath's `rename`, which
    wants the target's parent to exist, refuses; each object is copied, then the source removed,
    so an interruption leaves the source whole (and a partial copy beside it).
    """
    if not storage.is_url(source):
        source.rename(target)
        return
    def copy_tree(directory, destination):  # epath refuses rglob on gs:// (one RPC per level)
        for path in directory.iterdir():
            if path.is_dir():
                copy_tree(path, destination / path.name)
            else:
                path.copy(destination / path.name)

    copy_tree(source, target)
    source.rmtree()


def create_manager(workdir, keep: int = 3) -> Checkpoints:
    """The `Checkpoints` of `workdir` (kept for callers of the earlier function API)."""
    return Checkpoints(workdir, keep=keep)


def save(checkpoints: Checkpoints, step: int, state, data_state, force: bool = False) -> bool:
    return checkpoints.save(step, state, data_state, force=force)


def restore_latest(checkpoints: Checkpoints, abstract_state):
    """(state, data_state, step) of the newest intact checkpoint, or (None, None, 0)."""
    return checkpoints.restore_latest(abstract_state)
