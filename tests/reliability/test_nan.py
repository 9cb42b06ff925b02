"""A diverging run stops at the first non-finite step, writes no NaN checkpoint, and NaN weights
are refused by evaluation, prediction and export."""

import os
import shutil

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from deeplab_jax import experiment
from deeplab_jax.finite import NonFiniteError, check_finite
from deeplab_jax.serving.export import make_inference_fn
from deeplab_jax.train.state import load_trained
from tests.reliability.conftest import last_line, make_config, read_state, run_main

pytestmark = pytest.mark.slow


def test_nan_at_step_k_stops_there_and_saves_nothing_non_finite(demo_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    result = run_main(workdir, demo_data_dir, fault="nan_at_step:4", checkpoint_every_steps=1)
    assert result.returncode == 1, result.stderr[-3000:]
    line = last_line(result.stderr)
    assert "NonFiniteError" in line and "diverged at step 4" in line, line
    assert "Traceback" not in result.stderr
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert steps == [1, 2, 3]
    config = make_config(demo_data_dir)
    check_finite(read_state(workdir, 3, config), "checkpoint 3")  # verified and finite


def _write_unchecked_checkpoint(workdir, step, state):
    """A checkpoint as an older version (no finite check, no fingerprint) could leave it."""
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                    item_names=("state", "data"))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=ocp.args.JsonSave({})))
    manager.wait_until_finished()
    manager.close()


def test_nan_weights_are_refused_by_load_trained_and_export(reference, demo_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[0], workdir)
    config = make_config(demo_data_dir)
    state = reference[2]
    poisoned = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
    _write_unchecked_checkpoint(workdir, 7, poisoned)
    # evaluate and predict --workdir both load through load_trained.
    with pytest.raises(NonFiniteError, match="checkpoint 7 in .*checkpoints"):
        load_trained(config, workdir)
    model = experiment.create_model(config, for_eval=True)
    with pytest.raises(NonFiniteError, match="variables to export"):
        make_inference_fn(model, poisoned.variables(), (65, 65))
    make_inference_fn(model, state.variables(), (65, 65))  # finite weights pass


def test_an_error_after_training_started_is_the_last_line(demo_data_dir, tmp_path):
    result = run_main(str(tmp_path / "run"), demo_data_dir, **{"model.name": "no_such_model"})
    assert result.returncode != 0
    line = last_line(result.stderr)
    assert "no_such_model" in line, result.stderr[-3000:]
    assert "can't create new thread" not in result.stderr
