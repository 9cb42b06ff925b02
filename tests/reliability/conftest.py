"""Shared runs of the fault-injection suite: one uninterrupted reference run of the tiny config.

Every fault test trains the same 6 steps (checkpoints at 2, 4, 6) with a fault, recovers, and
compares its final state with the reference's bit for bit. In-process runs share compiled
programs through JAX's persistent cache; subprocess runs (`run_main`, `fault_driver.py`) get the
same cache directory through the environment.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from deeplab_jax.train import checkpoint
from deeplab_jax.train.loop import train_and_evaluate
from deeplab_jax.train.state import setup_state

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(REPO, "tests", "reliability", "fault_driver.py")
NUM_STEPS = 6
# As command-line overrides of configs/demo.py:tiny, so that subprocesses train the same run.
OVERRIDES = {"checkpoint_every_steps": 2, "keep_checkpoints": 10, "eval.every_steps": 3,
             "eval.num_overlays": 1, "predict.num_images": 0, "progress_bar": False}


def make_config(data_dir, **changes):
    from configs import demo

    config = demo.get_config("tiny")
    config.dataset.data_dir = data_dir
    for name, value in {**OVERRIDES, **changes}.items():
        target = config
        *parents, leaf = name.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def main_args(workdir, data_dir, **changes):
    flags = [f"--config={os.path.join(REPO, 'configs', 'demo.py')}:tiny", f"--workdir={workdir}",
             f"--config.dataset.data_dir={data_dir}"]
    return flags + [f"--config.{name}={value}" for name, value in {**OVERRIDES, **changes}.items()]


def run_main(workdir, data_dir, fault=None, **changes):
    """`python -m deeplab_jax.main` (or the fault driver) on the reference config, in a
    subprocess; returns the CompletedProcess."""
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir or ""
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    # The subprocess applies the package's XLA flags (xla_flags.apply) and this process does not;
    # the runs stay bit-identical because the tiny model has no ResNet stage of 3 or more blocks,
    # so it has no optimisation barrier for jaxlib 0.10's barrier flag to keep.
    command = [sys.executable, "-m", "deeplab_jax.main"]
    if fault:
        env["DEEPLAB_FAULT"] = fault
        command = [sys.executable, DRIVER]
    return subprocess.run(command + main_args(workdir, data_dir, **changes), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def last_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def read_state(workdir, step, config):
    """The verified state of checkpoint `step` as numpy arrays."""
    from deeplab_jax import experiment
    from deeplab_jax.parallel import mesh as mesh_lib

    setup = setup_state(config, experiment.create_model(config), mesh_lib.create_mesh())
    checkpoints = checkpoint.Checkpoints(workdir, read_only=True)
    try:
        state, _ = checkpoints.restore_step(step, setup.abstract)
    finally:
        checkpoints.close()
    return jax.device_get(state)


def assert_same_state(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="session")
def reference(demo_data_dir, tmp_path_factory):
    """(workdir, config, final state) of the uninterrupted reference run."""
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    config = make_config(demo_data_dir)
    train_and_evaluate(config, workdir)
    return workdir, config, read_state(workdir, NUM_STEPS, config)
