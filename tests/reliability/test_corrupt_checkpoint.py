"""A damaged latest checkpoint: resume falls back to the newest intact one and sets the bad aside;
another model's intact checkpoints are refused, not set aside."""

import gc
import glob
import os
import shutil
import sys

import pytest

from deeplab_jax.train import abandoned_reads
from deeplab_jax.train.checkpoint import CheckpointError, CheckpointLayoutError
from deeplab_jax.train.loop import train_and_evaluate
from deeplab_jax.train.state import load_trained
from tests.reliability.conftest import NUM_STEPS, assert_same_state, make_config, read_state


def _array_file(step_dir):
    """The largest file of the state's OCDBT database (the arrays' chunks)."""
    merged = glob.glob(os.path.join(step_dir, "state", "d", "*"))
    per_process = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_*", "d", "*"))
    return max(merged or per_process, key=os.path.getsize)


def _truncate_largest_array_file(step_dir):
    path = _array_file(step_dir)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


def _delete_manifest(step_dir):
    os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))


def _flip_bytes(step_dir):
    # tensorstore reports DATA_LOSS for a damaged compressed chunk; a change it cannot see (an
    # uncompressed chunk) is caught by the checkpoint's fingerprint (tests/train/test_checkpoint.py).
    path = _array_file(step_dir)
    with open(path, "r+b") as handle:
        data = bytearray(handle.read())
        for i in range(len(data) // 2, len(data) // 2 + 16):
            data[i] ^= 0xFF
        handle.seek(0)
        handle.write(data)


@pytest.mark.parametrize("damage", [_truncate_largest_array_file, _delete_manifest, _flip_bytes],
                         ids=["truncated", "no_manifest", "flipped_bytes"])
def test_damaged_latest_checkpoint_falls_back(reference, demo_data_dir, tmp_path, damage,
                                             monkeypatch, caplog):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[0], workdir)
    damage(os.path.join(workdir, "checkpoints", str(NUM_STEPS)))
    config = make_config(demo_data_dir, keep_checkpoints=2)
    # What reaches the console's unraisable hook (the hook Checkpoints installs chains to it).
    printed = []
    monkeypatch.setattr(sys, "unraisablehook", printed.append)
    monkeypatch.setattr(abandoned_reads, "_installed", False)
    train_and_evaluate(config, workdir)  # resumes from 4 (6 is damaged), trains 5 and 6
    gc.collect()  # the abandoned reads' coroutines report when they are collected
    # orbax's abandoned reads print nothing: one warning line says what happened (before, the
    # tiny demo model's chunk files truncated left 280 tracebacks, 7,961 lines of stderr). How
    # many reads are still in flight when the first fails depends on timing, so the count of
    # echoes is not asserted; before the fix this test saw them in each of 5 runs (jax 0.10).
    assert not printed, [str(u.exc_value)[:200] for u in printed]
    assert "exception was never retrieved" not in caplog.text
    assert "skipping checkpoint 6" in caplog.text
    corrupt = os.listdir(os.path.join(workdir, "checkpoints_corrupt"))
    assert len(corrupt) == 1 and corrupt[0].startswith("6-")
    reason = open(os.path.join(workdir, "checkpoints_corrupt", corrupt[0], "REASON.txt")).read()
    assert "checkpoint 6" in reason
    # max_to_keep=2 counts only orbax's directory: the set-aside copy is neither counted nor
    # deleted, and the re-created manager saved 6 again (and dropped 2).
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "6"]
    assert_same_state(read_state(workdir, NUM_STEPS, config), reference[2])


def test_no_intact_checkpoint_is_one_error_and_moves_nothing(reference, demo_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[0], workdir)
    for step in (2, 4, 6):
        _delete_manifest(os.path.join(workdir, "checkpoints", str(step)))
    with pytest.raises(CheckpointError, match="no intact checkpoint") as raised:
        train_and_evaluate(make_config(demo_data_dir), workdir)
    assert all(f"checkpoint {step}" in str(raised.value) for step in (2, 4, 6))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]
    assert not os.path.exists(os.path.join(workdir, "checkpoints_corrupt"))


def test_another_models_checkpoints_are_refused_not_set_aside(reference, demo_data_dir, tmp_path):
    """The same workdir with other widths: intact checkpoints of another model. The error names
    the variables and the config fields that differ; nothing is moved, and config.json still
    describes the run that wrote the checkpoints (evaluation reads its layout from there)."""
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[0], workdir)
    saved_config = open(os.path.join(workdir, "config.json")).read()
    config = make_config(demo_data_dir)
    config.model.overrides.widths = (8, 8, 16, 32)
    with pytest.raises(CheckpointLayoutError) as raised:
        train_and_evaluate(config, workdir)
    message = str(raised.value)
    assert f"checkpoint {NUM_STEPS} in" in message
    assert ("params/backbone/layer5/block1/conv1/conv/kernel is (3, 3, 16, 16) in the "
            "checkpoint, (3, 3, 16, 32) here") in message
    assert "model.overrides.widths: [8, 8, 16, 16] there, [8, 8, 16, 32] here" in message
    assert "num_steps" not in message  # only what differs
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]
    assert not os.path.exists(os.path.join(workdir, "checkpoints_corrupt"))
    assert open(os.path.join(workdir, "config.json")).read() == saved_config
    # evaluate / predict --workdir load through load_trained: the same error, not orbax's.
    with pytest.raises(CheckpointLayoutError, match="model.overrides.widths"):
        load_trained(config, workdir)
    # The run's own settings still resume (nothing was changed by the refusals).
    assert_same_state(read_state(workdir, NUM_STEPS, make_config(demo_data_dir)), reference[2])
