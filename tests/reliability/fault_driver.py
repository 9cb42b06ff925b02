"""Runs `python -m deeplab_jax.main` with one injected fault: test-only, never part of the package.

    DEEPLAB_FAULT=<fault>:<step> python tests/reliability/fault_driver.py --config=... --workdir=...

Faults (each patches the running process only, then calls the real command line):
- kill_at_step:N       SIGKILL when the loop asks for the batch of step N (steps < N are done);
- sigterm_at_step:N    SIGTERM (a preemption notice) at the same point;
- sigint_at_step:N     SIGINT (Ctrl-C) at the same point;
- kill_during_save:N   SIGKILL inside orbax's save of step N, after the arrays are written and
                       before the checkpoint is committed (renamed into place);
- nan_at_step:N        the parameters entering step N hold a NaN (as after a bad update), so
                       step N's loss, gradients and update are all non-finite;
- disk_full_on_save:N  every file orbax writes for checkpoint N fails with ENOSPC.
"""

import errno
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _kill(number=signal.SIGKILL):
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), number)


def _patch_signal_at_step(step, number=signal.SIGKILL):
    from deeplab_jax.data import input_pipeline
    from deeplab_jax.train import checkpoint

    original = input_pipeline.create_train_dataset
    restore = checkpoint.Checkpoints.restore_latest
    started = {}

    def restore_latest(self, abstract_state):
        result = restore(self, abstract_state)
        started["step"] = result[2]
        return result

    class Dataset:
        def __init__(self, inner):
            self._inner = inner

        def __iter__(self):
            return Iterator(iter(self._inner))

    class Iterator:
        def __init__(self, inner):
            self._inner = inner
            self._count = None

        def __next__(self):
            if self._count is None:
                self._count = started.get("step", 0)
            self._count += 1
            if self._count == step:
                _kill(number)
            return next(self._inner)

        def get_state(self):
            return self._inner.get_state()

        def set_state(self, state):
            self._inner.set_state(state)

    checkpoint.Checkpoints.restore_latest = restore_latest
    input_pipeline.create_train_dataset = lambda *a, **k: Dataset(original(*a, **k))


def _patch_kill_during_save(step):
    from orbax.checkpoint._src.path import atomicity

    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
        if f"/{step}.orbax-checkpoint-tmp" in os.fspath(self.get()):
            _kill()
        return await original(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize


def _patch_nan_at_step(step):
    import jax
    import jax.numpy as jnp

    from deeplab_jax.train import loop

    original = loop.make_train_step

    def make_train_step(*args, **kwargs):
        train_step = original(*args, **kwargs)

        def poisoned(state, batch, rng):
            poison = jnp.where(state.step + 1 == step, jnp.nan, 0.0)
            params = jax.tree.map(lambda p: p + poison.astype(p.dtype), state.params)
            return train_step(state.replace(params=params), batch, rng)

        return poisoned

    loop.make_train_step = make_train_step


def _patch_disk_full_on_save(step):
    from etils.epath import gpath

    marker = f"/{step}.orbax-checkpoint-tmp"
    for name in ("write_bytes", "write_text"):
        original = getattr(gpath.PosixGPath, name)

        def write(self, data, *args, _original=original, **kwargs):
            if marker in os.fspath(self):
                raise OSError(errno.ENOSPC, "No space left on device", os.fspath(self))
            return _original(self, data, *args, **kwargs)

        setattr(gpath.PosixGPath, name, write)


FAULTS = {"kill_at_step": _patch_signal_at_step,
          "sigterm_at_step": lambda step: _patch_signal_at_step(step, signal.SIGTERM),
          "sigint_at_step": lambda step: _patch_signal_at_step(step, signal.SIGINT),
          "kill_during_save": _patch_kill_during_save,
          "nan_at_step": _patch_nan_at_step, "disk_full_on_save": _patch_disk_full_on_save}

if __name__ == "__main__":
    fault, _, step = os.environ["DEEPLAB_FAULT"].partition(":")
    FAULTS[fault](int(step))
    from deeplab_jax import main

    main.run()
