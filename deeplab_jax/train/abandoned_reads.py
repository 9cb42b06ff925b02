"""Silences the echoes of orbax's abandoned reads after a checkpoint could not be read.

orbax restores a checkpoint's arrays with asyncio tasks over tensorstore reads. When one read fails
(a damaged checkpoint: truncated chunk files, flipped bytes), the restore raises at once, which
`Checkpoints` reports in one line before it tries an older checkpoint; the other reads are
abandoned. Each of them then prints a traceback of its own: the coroutines, when garbage-collected,
and tensorstore's callbacks, which find their event loop closed, through `sys.unraisablehook`,
each with a ~60-line TensorStore spec; and asyncio logs "Task exception was never retrieved" for
the tasks. Resuming the 16,920-parameter demo model past one damaged checkpoint wrote 7,961 lines
of stderr around the one line that said what happened.

`quiet()` (called by `Checkpoints` before its first read: the echoes start while orbax is still
unwinding the failed restore; idempotent) installs, for the rest of the process, an unraisable
hook that drops exactly those two kinds (an exception from a coroutine defined in orbax's package,
and RuntimeError('Event loop is closed') raised by asyncio with no object), and a filter on the
'asyncio' logger that drops its "exception was never retrieved" records of exceptions raised in
orbax's code or by tensorstore (of tasks, of the futures that gather them, and of tensorstore's
own futures). Everything else goes where it went before; with absl's verbosity at debug
(`--verbosity=1`) nothing is dropped.
"""

import asyncio
import inspect
import logging as python_logging
import os
import sys
import traceback

import orbax  # a namespace package (cheap to import): its __path__ says where it is installed
from absl import logging

ORBAX_DIRECTORIES = tuple(os.path.join(os.path.abspath(path), "") for path in orbax.__path__)
_ASYNCIO_DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(asyncio.__file__)), "")
_installed = False


def _in_orbax(filename):
    return os.path.abspath(filename).startswith(ORBAX_DIRECTORIES)


def _raised_in(trace, directory):
    frames = traceback.extract_tb(trace) if trace is not None else []
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(directory)


def is_echo(unraisable) -> bool:
    """True for the unraisable exceptions an abandoned orbax read leaves behind."""
    code = getattr(unraisable.object, "cr_code", None)  # a coroutine's code object
    if inspect.iscoroutine(unraisable.object) and code is not None:
        return _in_orbax(code.co_filename)
    error = unraisable.exc_value
    return (unraisable.object is None and isinstance(error, RuntimeError)
            and str(error) == "Event loop is closed"
            and _raised_in(unraisable.exc_traceback or error.__traceback__, _ASYNCIO_DIRECTORY))


class _HideNeverRetrieved(python_logging.Filter):
    """Drops asyncio's "... exception was never retrieved" records of orbax's and tensorstore's
    exceptions."""

    def filter(self, record):
        if logging.get_verbosity() >= logging.DEBUG or not record.exc_info:
            return True
        # asyncio's text is "<Task, _GatheringFuture, Future> exception was never retrieved".
        if not str(record.msg).split("\n", 1)[0].endswith(" exception was never retrieved"):
            return True
        error = record.exc_info[1]
        frames = traceback.extract_tb(error.__traceback__) if error is not None else []
        # Raised in orbax's code, or by tensorstore itself into the future orbax awaited (no
        # Python frames then; tensorstore's errors carry their spec, "[tensorstore_spec=...]").
        return not (any(_in_orbax(frame.filename) for frame in frames)
                    or "tensorstore_spec" in str(error))


def quiet():
    """Installs the unraisable hook and the asyncio filter (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = sys.unraisablehook

    def hook(unraisable):
        if logging.get_verbosity() >= logging.DEBUG or not is_echo(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    asyncio_logger = python_logging.getLogger("asyncio")
    if not any(isinstance(f, _HideNeverRetrieved) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_HideNeverRetrieved())
