"""What the command lines log on stderr: their own progress, not their libraries' bookkeeping.

absl's default verbosity shows warnings only, so the training and evaluation commands raise it to
INFO for their progress lines (loss, evaluations, saved checkpoints). orbax logs through absl too,
and at INFO it writes about 50 lines for every checkpoint it saves (temporary directories renamed,
futures awaited, timing dictionaries): a demo run's console would be two thirds orbax. So its
records below WARNING are held back unless the user asks for debug output (`--verbosity=1`);
its warnings and errors always show. The same holds for JAX's backend discovery, whose one INFO
record is "Unable to initialize backend 'tpu': ... libtpu.so ..." on every CPU or GPU machine: it
reads like an error to a new user, and it means only that an optional backend is absent (a backend
the user asked for, or a GPU present without its jaxlib, comes as an error or a warning).

`--verbosity` given on the command line wins over the command's default level.
"""

import logging as python_logging
import os

from absl import flags, logging

from deeplab_jax.train.abandoned_reads import ORBAX_DIRECTORIES
# Loggers whose INFO records are held back like orbax's (matched by name, not by message text).
QUIET_LOGGERS = ("jax._src.xla_bridge",)


class HideLibraryInfo(python_logging.Filter):
    """Drops orbax's and JAX's backend-discovery records below WARNING while absl's verbosity is
    below debug (1)."""

    def filter(self, record):
        if record.levelno >= python_logging.WARNING or logging.get_verbosity() >= logging.DEBUG:
            return True
        if record.name in QUIET_LOGGERS:
            return False
        return not os.path.abspath(record.pathname).startswith(ORBAX_DIRECTORIES)


def configure(default_level):
    """Sets absl's verbosity to `default_level` (absl.logging.INFO, WARNING, ...) unless the
    command line gave --verbosity, and hides the libraries' INFO records (once per process)."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(default_level)
    handler = logging.get_absl_handler()
    if not any(isinstance(existing, HideLibraryInfo) for existing in handler.filters):
        handler.addFilter(HideLibraryInfo())
