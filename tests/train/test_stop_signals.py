"""StopSignals: a signal sets a flag instead of ending the process; a second Ctrl-C stops at once;
the previous handlers come back."""

import os
import signal
import threading

import pytest

from deeplab_jax.train.stop_signals import StopSignals, TrainingStopped

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                reason="signal handlers can only be set in the main thread")


def test_first_signal_is_recorded_second_ctrl_c_interrupts_and_handlers_are_restored():
    before = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    stops = StopSignals().install()
    try:
        assert stops.received is None and not stops.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)  # delivered before the next bytecode
        assert stops.received == signal.SIGTERM and stops.should_stop(2)
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated notice changes nothing
        assert stops.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stops.close()
    assert {number: signal.getsignal(number) for number in before} == before


def test_training_stopped_says_where_to_resume_and_exits_as_a_shell_would():
    stopped = TrainingStopped(signal.SIGTERM, 1200, "/runs/a/checkpoints")
    assert stopped.exit_status == 143
    assert str(stopped) == ("stopped by SIGTERM after step 1200; its checkpoint is in "
                            "/runs/a/checkpoints: run the same command to resume from it")
    assert TrainingStopped(signal.SIGINT, 1, "d").exit_status == 130
