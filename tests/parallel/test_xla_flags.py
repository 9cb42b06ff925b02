"""Which XLA flags the package adds, per jaxlib release and installed accelerator plugins."""

import os
import sys

import pytest

from deeplab_jax.parallel import xla_flags


@pytest.mark.parametrize("version, accelerator, expected", [
    ((0, 10, 2), False, [xla_flags.YNN_CONV_FLAG, xla_flags.BARRIER_FLAG]),
    ((0, 10, 2), True, [xla_flags.YNN_CONV_FLAG]),  # process-wide: not with a GPU/TPU plugin
    ((0, 12, 0), False, [xla_flags.YNN_CONV_FLAG]),  # keeps the barriers by itself
    ((0, 9, 0), False, []),  # flags not verified there: XLA aborts on unknown flags
    ((0, 13, 0), False, []),
])
def test_flags_by_release(monkeypatch, version, accelerator, expected):
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: version)
    monkeypatch.setattr(xla_flags, "_accelerator_plugin_installed", lambda: accelerator)
    assert xla_flags.flags_to_add() == expected


def test_apply_keeps_a_users_own_setting_of_a_flag(monkeypatch):
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: (0, 10, 2))
    monkeypatch.setattr(xla_flags, "_accelerator_plugin_installed", lambda: False)
    # JAX is already running in the test process; hide it (nothing is imported meanwhile) so that
    # apply() merges the flags instead of leaving the started backend's settings alone.
    monkeypatch.delitem(sys.modules, "jax")
    monkeypatch.setenv("XLA_FLAGS", "--xla_disable_hlo_passes=foo")
    monkeypatch.delenv("DEEPLAB_JAX_NO_XLA_FLAGS", raising=False)
    xla_flags.apply()
    flags = os.environ["XLA_FLAGS"].split()
    assert flags == ["--xla_disable_hlo_passes=foo", xla_flags.YNN_CONV_FLAG]


def test_plugin_detection_reads_the_installed_distributions(monkeypatch):
    class Dist:
        def __init__(self, name):
            self.metadata = {"Name": name}

    monkeypatch.setattr(xla_flags.importlib.metadata, "distributions",
                        lambda: [Dist("numpy"), Dist("jax_cuda12_plugin")])
    assert xla_flags._accelerator_plugin_installed()
    monkeypatch.setattr(xla_flags.importlib.metadata, "distributions",
                        lambda: [Dist("numpy"), Dist("jaxlib")])
    assert not xla_flags._accelerator_plugin_installed()
