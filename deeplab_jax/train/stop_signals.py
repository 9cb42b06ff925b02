"""SIGTERM and Ctrl-C stop a training run at a step boundary, with a checkpoint of that step.

Preemptible and spot machines (Cloud TPU, GCE, SLURM's time limit, Kubernetes) send SIGTERM and
give the process some seconds before killing it; a person stops a run with Ctrl-C, and Jupyter's
"interrupt kernel" sends the same SIGINT. Without a handler both end the process where it stands
and the run loses everything since its last periodic checkpoint. With `StopSignals` the signal
only sets a flag: the loop finishes the step in flight, saves a checkpoint of it, and raises
`TrainingStopped`, and the same command resumes from that step with exactly the batches an
uninterrupted run would have seen. A second Ctrl-C while the run is finishing stops it at once
(KeyboardInterrupt), for when the step or the save hangs.

Handlers are installed only in a single-process run's main thread (signal handlers can only be
set there) and the previous handlers are restored when the run ends.

A multi-process job must stop every process at the same step: the checkpoint is written by all of
them together, and a process that stopped alone would leave the others waiting in a collective.
`jax.distributed.initialize` starts JAX's preemption service, whose notifier takes over SIGTERM in
each process (the signal then no longer ends it) and, when any process gets one, agrees with the
others on a step to stop at (one past the furthest step any process has reached);
`multihost_utils.reached_preemption_sync_point(step)` says True at that step in every process. So
there `should_stop(step)` asks the service once per step, and all processes save the same step
and stop. (A loop that does not ask never hears of the notice: the job trains on until the
scheduler's SIGKILL, and loses everything since its last periodic checkpoint.) Ctrl-C keeps its
default action there (a person stops a multi-host job by stopping the job). When the service is
switched off (`jax_enable_preemption_service=False`), SIGTERM keeps its default action and the
periodic checkpoints bound what a preemption costs.
"""

import signal
import threading

import jax
from absl import logging
from jax._src import distributed as _jax_distributed  # no public "is the service on?" test
from jax.experimental import multihost_utils

HANDLED = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(Exception):
    """The run stopped early on a signal, after saving a checkpoint of `step`."""

    def __init__(self, signal_number: int, step: int, directory):
        self.signal_number = signal_number
        self.step = step
        name = signal.Signals(signal_number).name
        super().__init__(f"stopped by {name} after step {step}; its checkpoint is in {directory}: "
                         "run the same command to resume from it")

    @property
    def exit_status(self) -> int:
        return 128 + self.signal_number  # what a shell reports for a process the signal ended


def _preemption_service_running() -> bool:
    return _jax_distributed.global_state.preemption_sync_manager is not None


class StopSignals:
    """From `install()` to `close()`, SIGTERM/SIGINT set `received` instead of ending the run (one
    process), or SIGTERM in any process stops all of them at one step (several processes)."""

    def __init__(self):
        self.received = None  # the first signal's number
        self._previous = {}
        self._synchronised = False

    def install(self):
        if jax.process_count() > 1:
            self._synchronised = _preemption_service_running()
        elif threading.current_thread() is threading.main_thread():
            for number in HANDLED:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def should_stop(self, step: int) -> bool:
        """Called after every step (in every process of a multi-process job, with the same step
        numbers): True once the run should save `step` and stop."""
        if self._synchronised and self.received is None:
            # Every process must ask at every step: the service agrees on the stop step from the
            # step numbers the processes have passed here.
            if multihost_utils.reached_preemption_sync_point(step):
                self.received = signal.SIGTERM
                logging.warning("a process of this job received SIGTERM (preemption): all "
                                "processes save step %d and stop", step)
        return self.received is not None

    def close(self):
        """Restores the handlers that were there before `install()`."""
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous = {}

    def _handle(self, number, frame):
        del frame
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        if self.received is None:
            self.received = number
            logging.warning("received %s: finishing the current step, then saving a checkpoint "
                            "and stopping%s", signal.Signals(number).name,
                            " (Ctrl-C again to stop at once)" if number == signal.SIGINT else "")
