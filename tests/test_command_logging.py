"""command_logging: orbax's and JAX's backend-discovery INFO records are held back on the console,
nothing else is."""

import logging as python_logging
import os

import pytest
from absl import logging

from deeplab_jax import command_logging


def _record(pathname, level, name="absl"):
    return python_logging.LogRecord(name, level, pathname, 1, "message", None, None)


@pytest.fixture
def verbosity():
    before = logging.get_verbosity()
    yield logging.set_verbosity
    logging.set_verbosity(before)


def test_orbax_info_is_hidden_below_debug_and_warnings_always_show(verbosity):
    orbax_file = os.path.join(command_logging.ORBAX_DIRECTORIES[0], "checkpoint",
                              "checkpoint_manager.py")
    ours = command_logging.__file__
    hide = command_logging.HideLibraryInfo()
    verbosity(logging.INFO)
    assert not hide.filter(_record(orbax_file, python_logging.INFO))
    assert hide.filter(_record(orbax_file, python_logging.WARNING))
    assert hide.filter(_record(ours, python_logging.INFO))
    # A package beside orbax whose name starts the same way is not orbax.
    assert hide.filter(_record(command_logging.ORBAX_DIRECTORIES[0].rstrip(os.sep) + "_extra/x.py",
                               python_logging.INFO))
    verbosity(logging.DEBUG)  # --verbosity=1: everything, orbax's bookkeeping included
    assert hide.filter(_record(orbax_file, python_logging.INFO))


def test_jax_backend_discovery_info_is_hidden_below_debug(verbosity):
    from jax._src import xla_bridge

    # The logger that writes "Unable to initialize backend 'tpu'" is the one the filter names.
    name, bridge = xla_bridge.logger.name, xla_bridge.__file__
    hide = command_logging.HideLibraryInfo()
    verbosity(logging.INFO)
    assert not hide.filter(_record(bridge, python_logging.INFO, name))
    # Its warnings (a GPU without a CUDA jaxlib) show, and so does the rest of JAX.
    assert hide.filter(_record(bridge, python_logging.WARNING, name))
    assert hide.filter(_record(bridge, python_logging.INFO, "jax._src.dispatch"))
    verbosity(logging.DEBUG)
    assert hide.filter(_record(bridge, python_logging.INFO, name))


def test_orbax_directory_is_where_orbax_checkpoint_lives():
    import orbax.checkpoint

    assert os.path.abspath(orbax.checkpoint.__file__).startswith(command_logging.ORBAX_DIRECTORIES)


def test_configure_installs_one_filter_and_keeps_a_given_verbosity(verbosity, monkeypatch):
    handler = logging.get_absl_handler()
    before = list(handler.filters)
    try:
        verbosity(logging.ERROR)
        monkeypatch.setattr(logging.FLAGS["verbosity"], "present", 1)  # --verbosity given
        command_logging.configure(logging.INFO)
        command_logging.configure(logging.INFO)
        assert logging.get_verbosity() == logging.ERROR
        hiders = [f for f in handler.filters if isinstance(f, command_logging.HideLibraryInfo)]
        assert len(hiders) == 1
        monkeypatch.setattr(logging.FLAGS["verbosity"], "present", 0)  # not given: the default
        command_logging.configure(logging.INFO)
        assert logging.get_verbosity() == logging.INFO
    finally:
        handler.filters[:] = before
