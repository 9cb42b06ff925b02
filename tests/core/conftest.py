"""Shared fixtures: the tiny demo data set built once per session, and a tiny training config."""

import pytest

from configs import demo as demo_config


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    """TFDS data dir holding 'deeplab_demo/tiny' (48 train / 16 val), built once."""
    from deeplab_jax.data import datasets, sources
    import dataclasses

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    descriptor = dataclasses.replace(datasets.get_dataset("demo"), tfds_name="deeplab_demo/tiny")
    sources.prepare(descriptor, data_dir)
    return data_dir


@pytest.fixture
def tiny_config(demo_data_dir):
    config = demo_config.get_config("tiny")
    config.dataset.data_dir = demo_data_dir
    config.progress_bar = False
    return config
