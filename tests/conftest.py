"""Test setup: 8 fake CPU devices so sharding code is really exercised, and XLA's faster-compiling
backend level (`tests/helpers/compilation.py`).

The device count must be fixed before JAX initialises its backends, so it is set here, at import
time of the first conftest, through XLA_FLAGS (works on every jaxlib we support) rather than through
`jax.config.update('jax_num_cpu_devices', 8)`, which exists only on newer releases.
"""

import os

from tests.helpers import compilation  # imports no JAX

# Subprocesses the tests start inherit these through the environment.
for _flag in compilation.xla_flags(8).split():
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keep TFDS from probing GCE metadata (no network on CI).
os.environ.setdefault("NO_GCE_CHECK", "true")

import jax  # noqa: E402  (after the environment is set)
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# Tests build the same small models many times; the persistent cache turns repeated XLA compiles of
# identical programs (seconds each on 2 cores) into file reads. One directory per test session,
# shared through the environment by the xdist workers (they inherit the controller's) and by the
# subprocesses the tests start (command lines, notebooks, multi-host workers), so a program
# compiled anywhere in the session is compiled once; a new session starts empty, which keeps runs
# independent. The process that made the directory removes it at the end (pytest_unconfigure): it
# holds tens of MB a session, and a developer runs many sessions.
import shutil  # noqa: E402
import tempfile  # noqa: E402

_CACHE_VARIABLE = "DEEPLAB_JAX_TEST_XLA_CACHE"
_owns_cache_dir = _CACHE_VARIABLE not in os.environ
if _owns_cache_dir:
    os.environ[_CACHE_VARIABLE] = tempfile.mkdtemp(prefix="deeplab_jax_xla_cache_")
_cache_dir = os.environ[_CACHE_VARIABLE]
os.makedirs(_cache_dir, exist_ok=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
jax.config.update("jax_compilation_cache_dir", _cache_dir)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_unconfigure(config):
    if _owns_cache_dir:
        shutil.rmtree(_cache_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def num_devices():
    assert jax.device_count() == 8, "tests expect 8 fake CPU devices; XLA_FLAGS was set too late"
    return jax.device_count()


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    """TFDS data dir holding 'deeplab_demo/tiny' (48 train / 16 val), built once per session."""
    import dataclasses

    from deeplab_jax.data import datasets, sources

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    descriptor = dataclasses.replace(datasets.get_dataset("demo"), tfds_name="deeplab_demo/tiny")
    sources.prepare(descriptor, data_dir)
    return data_dir


@pytest.fixture
def tiny_config(demo_data_dir):
    """configs/demo.py:tiny reading the session's tiny demo data, without a progress bar."""
    from configs import demo as demo_config

    config = demo_config.get_config("tiny")
    config.dataset.data_dir = demo_data_dir
    config.progress_bar = False
    return config
