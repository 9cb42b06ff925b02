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
set there) and the previous handlers are restored when the run ends. In a multi-process job the
processes would have to agree on the step to stop at, so there the signals keep their default
action, and the periodic checkpoints bound what a preemption costs.
"""

import signal
import threading

import jax
from absl import logging

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


class StopSignals:
    """From `install()` to `close()`, SIGTERM/SIGINT set `received` instead of ending the run."""

    def __init__(self):
        self.received = None  # the first signal's number
        self._previous = {}

    def install(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for number in HANDLED:
                self._previous[number] = signal.signal(number, self._handle)
        return self

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
