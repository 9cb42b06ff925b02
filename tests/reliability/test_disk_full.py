"""A full disk: one clear error, the previous checkpoint intact, an exact resume."""

import errno
import os

import pytest
from etils.epath import backend

from deeplab_jax.storage import DiskFullError
from deeplab_jax.train.loop import train_and_evaluate
from tests.reliability.conftest import (NUM_STEPS, assert_same_state, last_line, make_config,
                                        read_state, run_main)

pytestmark = pytest.mark.slow


def test_disk_full_during_a_checkpoint(reference, demo_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    result = run_main(workdir, demo_data_dir, fault="disk_full_on_save:4")
    assert result.returncode == 1, result.stderr[-3000:]
    line = last_line(result.stderr)
    assert "DiskFullError" in line and "no space left on device" in line, line
    assert "checkpoint 4" in line and "latest complete checkpoint is step 2" in line, line
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    # The partial save is gone; checkpoint 2 verifies (fingerprint, finite) and resumes exactly.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    read_state(workdir, 2, reference[1])
    train_and_evaluate(make_config(demo_data_dir), workdir)
    assert_same_state(read_state(workdir, NUM_STEPS, reference[1]), reference[2])


class _FullAfter:
    """A file whose writes fail with ENOSPC once `budget` bytes were written."""

    def __init__(self, handle, budget):
        self._handle, self._budget = handle, budget

    def write(self, data):
        self._budget[0] -= len(data)
        if self._budget[0] < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._handle.close()


@pytest.mark.parametrize("target", ["metrics.jsonl", "tfevents"])
def test_disk_full_while_logging(reference, demo_data_dir, tmp_path, monkeypatch, target):
    workdir = str(tmp_path / "run")
    budget = [1000]
    original = backend.os_backend.open

    def open_(path, mode):
        handle = original(path, mode)
        if target in os.fspath(path) and ("a" in mode or "w" in mode):
            return _FullAfter(handle, budget)
        return handle

    monkeypatch.setattr(backend.os_backend, "open", open_)
    with pytest.raises(DiskFullError, match="no space left on device while writing") as raised:
        train_and_evaluate(make_config(demo_data_dir), workdir)
    assert target.split(".")[0] in str(raised.value) or "TensorBoard" in str(raised.value)
    monkeypatch.undo()
    # Checkpoints before the failure are intact, and the run resumes to the reference state.
    train_and_evaluate(make_config(demo_data_dir), workdir)
    assert_same_state(read_state(workdir, NUM_STEPS, reference[1]), reference[2])
