"""When and how jax.distributed.initialize is called (flags, environment, clusters): `plan`."""

import pytest

from deeplab_jax.parallel import distributed


def _plan(env, **flags):
    return distributed.plan(env=env, tpu_vm=False, **flags)


def test_single_process_by_default():
    assert _plan({}).reason is None
    assert _plan({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}).reason is None
    assert _plan({"JAX_COORDINATOR_ADDRESS": "h:1"}, mode="off").reason is None


def test_flags_win_over_environment():
    plan = _plan({"JAX_COORDINATOR_ADDRESS": "env:1", "JAX_NUM_PROCESSES": "4",
                  "JAX_PROCESS_ID": "3"},
                 coordinator_address="flag:2", process_id=1, heartbeat_timeout_s=7)
    assert plan.reason == "explicit coordinator"
    assert plan.kwargs == {"coordinator_address": "flag:2", "num_processes": 4, "process_id": 1,
                           "heartbeat_timeout_seconds": 7, "initialization_timeout": 300}


def test_clusters_are_detected():
    slurm = _plan({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"})
    assert slurm.reason == "SLURM job with several tasks"
    assert "coordinator_address" not in slurm.kwargs  # JAX reads SLURM's variables itself
    assert _plan({"OMPI_COMM_WORLD_SIZE": "2"}).reason == "Open MPI job with several ranks"
    tpu = distributed.plan(env={}, tpu_vm=True)
    assert tpu.reason == "Cloud TPU VM" and tpu.kwargs["_optional"]
    assert distributed.plan(mode="on", env={}, tpu_vm=False).reason


@pytest.mark.parametrize("flags, message", [
    (dict(num_processes=2), "without coordinator_address, process_id"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), r"in \[0, num_processes"),
    (dict(num_processes="two"), "must be an integer"),
    (dict(mode="maybe"), "--distributed"),
])
def test_incomplete_or_bad_arguments_are_clear_errors(flags, message):
    with pytest.raises(ValueError, match=message):
        _plan({}, **flags)


def test_local_device_ids_from_a_flag_list():
    plan = _plan({}, coordinator_address="h:1", num_processes=2, process_id=0,
                 local_device_ids=["0", "1"])
    assert plan.kwargs["local_device_ids"] == [0, 1]
