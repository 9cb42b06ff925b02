"""Multi-process (multi-host) start-up: `jax.distributed.initialize` from flags or the environment.

JAX's own runtime is the distributed engine: one Python process per host (or per GPU), all running
the same program; process 0 hosts the coordination service. `initialize` must run before anything
touches a JAX backend (device lists, arrays). What it does, by `mode`:

- 'off': nothing (one process).
- 'on': always `jax.distributed.initialize(...)`; arguments not given are auto-detected by JAX
  (Cloud TPU VM metadata, SLURM, Open MPI, Kubernetes).
- 'auto' (default): initialize when the job is evidently multi-process: a coordinator address or a
  process count > 1 was given (flags, or the environment variables JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID), SLURM runs more than one task (SLURM_NTASKS), Open MPI more
  than one rank (OMPI_COMM_WORLD_SIZE), or this is a Cloud TPU VM (libtpu installed and TPU chips
  present) -- there JAX reads the pod slice's workers from the metadata server, and a single-host
  VM where that fails stays a one-process job, with a warning.

Failure is bounded: every process sends heartbeats to the coordination service; when one dies, the
service notices within `heartbeat_timeout_s` (or at once when the coordinator's socket closes),
and every other process is terminated with the fatal error "Terminating process because the JAX
distributed service detected fatal errors ... another task died" (exit status 134) instead of
hanging in a collective (tests/parallel/test_multihost.py kills a peer and checks the survivor
exits within the timeout). A preemption notice (SIGTERM) to any process is different: JAX's
preemption service, which `jax.distributed.initialize` starts, tells the others, and the training
loop stops every process at one step and saves it (`train/stop_signals.py`).

CPU processes reach each other through gloo collectives over TCP (JAX's default CPU collectives
implementation; `jax_cpu_collectives_implementation`), which is what the tests use on loopback.
"""

import dataclasses
import glob
import importlib.util
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
# Neither "have the backends started?" nor a device-free barrier has a public API; both private
# names have been stable across the supported releases (0.10-0.12).
from jax._src import distributed as _jax_distributed
from jax._src import xla_bridge as _xla_bridge
from jax.sharding import NamedSharding, PartitionSpec as P

MODES = ("auto", "on", "off")
DEFAULT_HEARTBEAT_TIMEOUT_S = 100  # JAX's default
DEFAULT_INITIALIZATION_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `initialize` will do: reason (why; None = stay single-process) and the arguments."""

    reason: str | None
    kwargs: dict


def _int_or_none(value, name):
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be an integer") from None


def _device_ids(value):
    if value in (None, "", ()):
        return None
    if isinstance(value, str):
        value = [piece for piece in value.split(",") if piece.strip()]
    return [_int_or_none(v, "local_device_ids") for v in value]


def _is_cloud_tpu_vm(env) -> bool:
    """libtpu installed and TPU chips visible (/dev/accel* or /dev/vfio/*), no JAX import needed."""
    if env.get("TPU_SKIP_MDS_QUERY"):
        return False
    has_libtpu = importlib.util.find_spec("libtpu") is not None
    return has_libtpu and bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def plan(mode: str = "auto", coordinator_address: str | None = None,
         num_processes: int | None = None, process_id: int | None = None,
         local_device_ids: Sequence[int] | str | None = None,
         heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
         initialization_timeout_s: int = DEFAULT_INITIALIZATION_TIMEOUT_S,
         env: Mapping[str, str] | None = None, tpu_vm: bool | None = None) -> Plan:
    """Decides whether and how to initialize; flags win over the environment. Pure (testable)."""
    env = os.environ if env is None else env
    if mode not in MODES:
        raise ValueError(f"--distributed={mode!r}; use one of {MODES}")
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = _int_or_none(
        num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES"),
        "num_processes")
    process_id = _int_or_none(
        process_id if process_id is not None else env.get("JAX_PROCESS_ID"), "process_id")
    local_device_ids = _device_ids(local_device_ids)
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes={num_processes} must be >= 1")
    if process_id is not None and num_processes is not None and \
            not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} must be in [0, num_processes={num_processes})")
    kwargs = {"heartbeat_timeout_seconds": int(heartbeat_timeout_s),
              "initialization_timeout": int(initialization_timeout_s)}
    for name, value in (("coordinator_address", coordinator_address),
                        ("num_processes", num_processes), ("process_id", process_id),
                        ("local_device_ids", local_device_ids)):
        if value is not None:
            kwargs[name] = value
    if mode == "off":
        return Plan(None, {})
    if mode == "on":
        return Plan("requested (--distributed=on)", kwargs)
    if coordinator_address or (num_processes or 1) > 1:
        if coordinator_address is None or num_processes is None or process_id is None:
            missing = [n for n, v in (("coordinator_address", coordinator_address),
                                      ("num_processes", num_processes),
                                      ("process_id", process_id)) if v is None]
            raise ValueError(
                f"multi-process run without {', '.join(missing)}: give all of "
                "--coordinator_address=HOST:PORT --num_processes=N --process_id=I (or "
                "JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID), or use "
                "--distributed=on on a cluster JAX detects (TPU VM, SLURM, Open MPI)")
        return Plan("explicit coordinator", kwargs)
    if "SLURM_JOB_ID" in env and (_int_or_none(env.get("SLURM_NTASKS"), "SLURM_NTASKS") or 1) > 1:
        return Plan("SLURM job with several tasks", kwargs)
    if (_int_or_none(env.get("OMPI_COMM_WORLD_SIZE"), "OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return Plan("Open MPI job with several ranks", kwargs)
    if tpu_vm if tpu_vm is not None else _is_cloud_tpu_vm(env):
        return Plan("Cloud TPU VM", {**kwargs, "_optional": True})
    return Plan(None, {})


def is_initialized() -> bool:
    return jax.distributed.is_initialized()


def initialize(mode: str = "auto", **options) -> bool:
    """Initializes JAX's multi-process runtime if `plan` says so; True if it is initialized.

    options: coordinator_address, num_processes, process_id, local_device_ids,
    heartbeat_timeout_s, initialization_timeout_s (see `plan`). Call before any JAX computation.
    """
    if is_initialized():
        return True
    decision = plan(mode, **options)
    if decision.reason is None:
        return False
    if _xla_bridge.backends_are_initialized():
        raise RuntimeError(
            "deeplab_jax.parallel.distributed.initialize must run before JAX creates its backends "
            "(before jax.devices() or any computation); call it first thing in main")
    kwargs = dict(decision.kwargs)
    optional = kwargs.pop("_optional", False)
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as error:  # noqa: BLE001 - auto-detection failures have many types
        if not optional:
            raise
        logging.warning("single process: JAX could not set up the TPU VM's multi-host runtime "
                        "(%s); pass --distributed=on to make this an error", error)
        return False
    if jax.default_backend() == "cpu":
        # gloo creates its TCP context for a group of devices at the group's first collective
        # and gives the peers 30 s to show up (jaxlib 0.12: "Gloo context initialization failed:
        # GetKeyValue() timed out"); processes that compile at different speeds miss that.
        # Meet at a coordination-service barrier first, then run one tiny collective over all
        # devices in lockstep: every later program over that device set reuses the context, and
        # its collectives wait for slower peers without a limit.
        barrier("deeplab_jax_initialized", kwargs.get("initialization_timeout",
                                                      DEFAULT_INITIALIZATION_TIMEOUT_S))
        _sum_over_all_devices()
    logging.info("distributed (%s): process %d of %d, %d local devices of %d", decision.reason,
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
    return True


def barrier(name: str, timeout_s: float = DEFAULT_INITIALIZATION_TIMEOUT_S) -> None:
    """Waits until every process reaches `name` (coordination-service barrier; no devices)."""
    if jax.process_count() == 1:
        return
    _jax_distributed.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))


def _sum_over_all_devices() -> None:
    """One all-reduce over every device (the set the training mesh uses), checked."""
    mesh = jax.make_mesh((jax.device_count(),), ("all",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    ones = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P("all")), np.ones((jax.local_device_count(),), np.float32))
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(ones)
    if int(np.asarray(total)) != jax.device_count():
        raise RuntimeError(f"all-reduce over {jax.device_count()} devices gave {total}")
