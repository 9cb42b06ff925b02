"""Fixtures of the data tests: a seeded rng, and a builder built in a fresh data dir.

The fake official layouts the tests write live in tests/helpers/official_layouts.py.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from deeplab_jax.data import sources


@pytest.fixture
def build(tmp_path):
    """build(tfds_name, manual_dir, **builder_kwargs) -> prepared builder in a fresh data dir."""
    counter = iter(range(1000))

    def _build(tfds_name, manual_dir, **builder_kwargs):
        data_dir = str(tmp_path / f"tfds_{next(counter)}")
        builder = sources.get_builder(tfds_name, data_dir, **builder_kwargs)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
        return builder

    return _build


@pytest.fixture
def rng():
    return np.random.default_rng(0)
