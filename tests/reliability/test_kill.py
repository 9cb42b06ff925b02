"""kill -9 at a random step and in the middle of a save -> resume -> the uninterrupted result."""

import os
import random

import pytest

from deeplab_jax.train.loop import train_and_evaluate
from deeplab_jax.train.metric_writer import read_metrics
from tests.reliability.conftest import (NUM_STEPS, assert_same_state, make_config, read_state,
                                        run_main)

pytestmark = pytest.mark.slow


def _resume_and_compare(workdir, reference, data_dir):
    train_and_evaluate(make_config(data_dir), workdir)
    _, config, expected = reference
    assert_same_state(read_state(workdir, NUM_STEPS, config), expected)
    # One record per step in the file itself, not only through read_metrics.
    raw = [line for line in open(os.path.join(workdir, "metrics.jsonl")) if '"train"' in line]
    train = [r["step"] for r in read_metrics(workdir) if r["split"] == "train"]
    assert len(raw) == len(train) and train == [2, 4, 6]
    val = [r["step"] for r in read_metrics(workdir) if r["split"] == "val"]
    assert val == [3, 6]


def test_kill_at_a_random_step_then_resume_is_bit_identical(reference, demo_data_dir, tmp_path):
    step = random.Random(os.environ.get("PYTEST_XDIST_TESTRUNUID", "0")).randint(2, NUM_STEPS)
    workdir = str(tmp_path / "run")
    killed = run_main(workdir, demo_data_dir, fault=f"kill_at_step:{step}")
    assert killed.returncode == -9, killed.stderr[-3000:]
    done = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert done == [s for s in (2, 4, 6) if s < step], (step, done)
    _resume_and_compare(workdir, reference, demo_data_dir)


def test_kill_during_a_save_then_resume_is_bit_identical(reference, demo_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    killed = run_main(workdir, demo_data_dir, fault="kill_during_save:4")
    assert killed.returncode == -9, killed.stderr[-3000:]
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    assert "2" in names and "4" not in names and any(n.startswith("4.orbax") for n in names)
    _resume_and_compare(workdir, reference, demo_data_dir)
    # The unfinished save is cleaned up; checkpoint 4 is the resumed run's own.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]
