"""Two processes on this machine (jax.distributed over loopback, gloo CPU collectives).

Truths: (1) one process holding all 4 devices, fed the same global batches (what each process
reads from its own shard, concatenated), reaches the same parameters; (2) the evaluation's summed
confusion matrix counts every valid pixel of the val examples exactly once, in both processes;
(3) a SIGKILLed peer makes the survivor exit with JAX's clear fatal error within the heartbeat
timeout, instead of hanging in a collective; (4) SIGTERM (preemption) sent to one process stops
both at one step, which they save together and from which both resume.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.helpers import compilation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(REPO, "tests", "parallel", "multihost_worker.py")
LOCAL_DEVICES = 2  # per process; 2 processes = 4 devices, batch 8 = 2 images per device
HEARTBEAT_TIMEOUT_S = 10  # multihost_worker.HEARTBEAT_TIMEOUT_S
# Detection takes up to one heartbeat timeout; the rest is slack for a loaded 2-core CI machine.
EXIT_BOUND_S = HEARTBEAT_TIMEOUT_S + 35
FATAL_MESSAGE = "JAX distributed service detected fatal errors"

pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _env(devices, cache_dir):
    env = dict(os.environ)
    env["XLA_FLAGS"] = compilation.xla_flags(devices)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    # The long run of the kill test compiles the same programs as the short one: share a cache.
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    return env


def _start_processes(role, out, data_dir, cache_dir, num_processes=2):
    port = _free_port()
    procs = []
    for process_id in range(num_processes):
        log = open(os.path.join(out, f"log_{process_id}.txt"), "w")
        procs.append(subprocess.Popen(
            [sys.executable, WORKER, role, str(out), data_dir, str(port), str(process_id),
             str(num_processes)], cwd=REPO, env=_env(LOCAL_DEVICES, cache_dir), stdout=log,
            stderr=subprocess.STDOUT))
    return procs


def _log(out, process_id):
    with open(os.path.join(out, f"log_{process_id}.txt")) as handle:
        return handle.read()


def _wait_all(procs, out, timeout):
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for i, proc in enumerate(procs):
        assert proc.returncode == 0, f"process {i} failed:\n{_log(out, i)[-4000:]}"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("xla_cache")


def _restore_on_one_device(path):
    """A checkpoint item written by several processes, read into this single process."""
    import jax

    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(str(path))
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    restored = checkpointer.restore(str(path), target)
    checkpointer.close()
    return restored


def _valid_pixels(data_dir, count):
    from configs import demo
    from deeplab_jax import experiment

    config = demo.get_config("tiny")
    config.dataset.data_dir = data_dir
    descriptor = experiment.dataset_descriptor(config)
    source = experiment.load_source(config, descriptor, descriptor.eval_split)
    return sum(int(np.sum(source[i]["label"] != descriptor.ignore_label)) for i in range(count))


def test_two_processes_train_like_one_process(demo_data_dir, tmp_path, cache_dir):
    out = tmp_path / "multi"
    out.mkdir()
    ref_out = tmp_path / "reference"
    ref_out.mkdir()
    # The reference runs alongside (compilation is mostly single-threaded: 2 cores serve 3).
    with open(ref_out / "log.txt", "w") as ref_log:
        reference = subprocess.Popen(
            [sys.executable, WORKER, "reference", str(ref_out), demo_data_dir, "2"], cwd=REPO,
            env=_env(2 * LOCAL_DEVICES, cache_dir), stdout=ref_log, stderr=subprocess.STDOUT)
        try:
            _wait_all(_start_processes("train", out, demo_data_dir, cache_dir), out, timeout=400)
            reference.wait(timeout=400)
        finally:
            if reference.poll() is None:
                reference.kill()
                reference.wait()
    assert reference.returncode == 0, (ref_out / "log.txt").read_text()[-4000:]
    expected = np.load(ref_out / "reference.npz")

    # Orbax wrote one checkpoint from both processes; its parameters equal the reference's.
    workdir = out / "workdir"
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3"]
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(
        _restore_on_one_device(workdir / "checkpoints" / "3" / "state")["params"])[0]
    assert len(leaves) == len([k for k in expected.files if k != "confusion"])
    for path, leaf in leaves:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        # Same programs over the same 4 devices; only the cross-process all-reduce (gloo) may
        # sum in another order. Adam divides by sqrt(v), so a near-zero gradient's rounding can
        # move its parameter by up to ~lr x 1e-3 over 3 steps (lr 3e-3): atol 1e-5. A wrong shard
        # or a missing all-reduce changes every parameter by ~lr.
        np.testing.assert_allclose(np.asarray(leaf), expected[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)

    # Summed confusion matrices: both processes hold the global one; every valid pixel of the
    # 8 evaluated val images is counted once (process 0 evaluates images 0-3, process 1 4-7).
    confusion_0 = np.load(out / "confusion_0.npy")
    confusion_1 = np.load(out / "confusion_1.npy")
    np.testing.assert_array_equal(confusion_0, confusion_1)
    assert confusion_0.sum() == _valid_pixels(demo_data_dir, 8)
    assert np.abs(confusion_0 - expected["confusion"]).sum() <= 0.002 * confusion_0.sum()

    # Process 0 alone writes logs and pictures: one record per step, nothing twice.
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]
    assert [r["step"] for r in records if r["split"] == "val"] == [3]
    assert len([f for f in os.listdir(workdir / "predictions") if f.endswith(".png")]) == 1


def _wait_for_training(procs, out, metrics_file):
    deadline = time.monotonic() + 400
    while not (metrics_file.exists() and '"split": "train"' in metrics_file.read_text()):
        assert all(p.poll() is None for p in procs), _log(out, 0)[-3000:]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.5)


def _train_steps(metrics_file):
    return [json.loads(line)["step"] for line in open(metrics_file)
            if '"split": "train"' in line]


def test_sigterm_to_one_process_stops_both_at_one_saved_step_and_they_resume(
        demo_data_dir, tmp_path, cache_dir):
    out = tmp_path / "preempted"
    out.mkdir()
    procs = _start_processes("long", out, demo_data_dir, cache_dir)
    workdir = out / "workdir"
    try:
        _wait_for_training(procs, out, workdir / "metrics.jsonl")
        procs[1].send_signal(signal.SIGTERM)  # only one process gets the notice
        for proc in procs:
            proc.wait(timeout=120)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logs = [_log(out, i) for i in range(2)]
    assert [proc.returncode for proc in procs] == [143, 143], logs[1][-3000:]
    stopped = [re.findall(r"stopped by SIGTERM after step (\d+); its checkpoint is in", log)
               for log in logs]
    assert stopped[0] and stopped[0] == stopped[1], logs
    step = int(stopped[0][0])
    # The step both agreed on is saved (the long run has no periodic checkpoints), complete
    # enough to be read back, and the logs hold every step up to it, once.
    assert sorted(os.listdir(workdir / "checkpoints")) == [str(step)]
    _restore_on_one_device(workdir / "checkpoints" / str(step) / "state")
    assert _train_steps(workdir / "metrics.jsonl") == list(range(1, step + 1))

    # The same job started again goes on from that step in both processes.
    _wait_all(_start_processes(f"until={step + 2}", out, demo_data_dir, cache_dir), out,
              timeout=400)
    assert _train_steps(workdir / "metrics.jsonl") == list(range(1, step + 3))
    assert sorted(os.listdir(workdir / "checkpoints")) == [str(step), str(step + 2)]


@pytest.mark.parametrize("killed", [1])
def test_killed_process_makes_the_other_exit_with_a_clear_error(demo_data_dir, tmp_path,
                                                                 cache_dir, killed):
    out = tmp_path / "long"
    out.mkdir()
    procs = _start_processes("long", out, demo_data_dir, cache_dir)
    survivor = procs[1 - killed]
    try:
        _wait_for_training(procs, out, out / "workdir" / "metrics.jsonl")
        procs[killed].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        survivor.wait(timeout=EXIT_BOUND_S + 60)
        elapsed = time.monotonic() - killed_at
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log = _log(out, 1 - killed)
    assert survivor.returncode != 0
    assert FATAL_MESSAGE in log, log[-3000:]
    assert elapsed < EXIT_BOUND_S, f"survivor took {elapsed:.1f} s to exit"
    print(f"survivor exited {elapsed:.1f} s after process {killed} was killed")
