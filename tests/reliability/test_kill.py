"""kill -9 at a random step and in the middle of a save, SIGTERM and Ctrl-C -> resume -> the
uninterrupted result."""

import os
import random

import pytest

from deeplab_jax.train.loop import train_and_evaluate
from deeplab_jax.train.metric_writer import read_metrics
from tests.reliability.conftest import (NUM_STEPS, assert_same_state, last_line, make_config,
                                        read_state, run_main)

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


@pytest.mark.parametrize("fault, signal_name, status, step",
                         [("sigterm_at_step", "SIGTERM", 143, 3),
                          ("sigint_at_step", "SIGINT", 130, 5)])
def test_sigterm_or_ctrl_c_saves_the_step_in_flight_then_resume_is_bit_identical(
        reference, demo_data_dir, tmp_path, fault, signal_name, status, step):
    """A preemption notice (SIGTERM) or Ctrl-C while step N's batch is fetched: step N finishes,
    is saved (checkpoints come every 2 steps, so N = 3 or 5 is an extra one), the run exits with
    the status a shell reports for that signal and says so on its last line."""
    workdir = str(tmp_path / "run")
    stopped = run_main(workdir, demo_data_dir, fault=f"{fault}:{step}")
    assert stopped.returncode == status, stopped.stderr[-3000:]
    line = last_line(stopped.stderr)
    assert line.startswith(f"stopped by {signal_name} after step {step}"), line
    assert "Traceback" not in stopped.stderr
    done = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert done == [s for s in (2, 4) if s < step] + [step]
    _resume_and_compare(workdir, reference, demo_data_dir)
