"""Entry point: python -m deeplab_jax.main --config=configs/demo.py --workdir=/tmp/deeplab_demo

Parses flags, applies the XLA CPU flags, starts JAX's multi-process runtime when the job has
several processes (`parallel.distributed.initialize`, flags --coordinator_address/--num_processes/
--process_id or the cluster's environment), and calls `train.loop.train_and_evaluate(config,
workdir)`; nothing else (tests and notebooks call the same function). `--config.<field>=value`
overrides any config field; the config is locked, so a misspelt field is an error rather than a
silently ignored value.

Faults the run detects itself (a diverged step, a full disk, no intact checkpoint) end it with
exit status 1 and their message as the last line on stderr, without a traceback; SIGTERM or
Ctrl-C end it after a checkpoint of the step in flight, with the status a shell gives a process
that signal ended (143, 130) and the step as the last line; anything else keeps its traceback,
whose last line is that error (writers and the checkpoint manager are closed before, so nothing
prints after it).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from deeplab_jax import command_logging
from deeplab_jax.finite import NonFiniteError
from deeplab_jax.parallel import distributed, xla_flags
from deeplab_jax.storage import DiskFullError
from deeplab_jax.train.checkpoint import CheckpointError
from deeplab_jax.train.loop import train_and_evaluate
from deeplab_jax.train.stop_signals import TrainingStopped

# Errors whose message says all there is to say: no traceback.
REPORTED_FAILURES = (NonFiniteError, DiskFullError, CheckpointError)

FLAGS = flags.FLAGS


def define_flags():
    config_flags.DEFINE_config_file("config", None, "configuration file (configs/*.py[:variant])",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and predictions")
    flags.mark_flags_as_required(["config", "workdir"])
    # Multi-process runs: every process runs this same command.
    flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                      "jax.distributed.initialize: 'auto' when the flags/environment show several "
                      "processes (coordinator address, SLURM, Open MPI, Cloud TPU VM); 'on' always")
    flags.DEFINE_string("coordinator_address", None,
                        "HOST:PORT of process 0's coordination service (env "
                        "JAX_COORDINATOR_ADDRESS)")
    flags.DEFINE_integer("num_processes", None, "number of processes (env JAX_NUM_PROCESSES)")
    flags.DEFINE_integer("process_id", None, "this process's index (env JAX_PROCESS_ID)")
    flags.DEFINE_list("local_device_ids", None, "devices this process uses, e.g. 0 or 0,1 (GPUs)")
    flags.DEFINE_integer("heartbeat_timeout_s", 100,
                         "a process that stops sending heartbeats this long is declared dead and "
                         "every other process exits with an error")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.initialize(
        FLAGS.distributed, coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
        local_device_ids=FLAGS.local_device_ids, heartbeat_timeout_s=FLAGS.heartbeat_timeout_s)
    command_logging.configure(logging.INFO)
    try:
        results = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except REPORTED_FAILURES as error:
        logging.flush()
        sys.stderr.flush()
        sys.exit(f"error: {type(error).__name__}: {error}")
    except TrainingStopped as stopped:  # not an error: the run can go on from its checkpoint
        logging.flush()
        print(stopped, file=sys.stderr, flush=True)
        sys.exit(stopped.exit_status)
    if results:
        print(f"final val mIoU {results['miou']:.4f} (pixel accuracy "
              f"{results['pixel_accuracy']:.4f}); workdir {FLAGS.workdir}")


def run():
    xla_flags.apply()  # before JAX starts its backends (importing modules does not start them)
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
