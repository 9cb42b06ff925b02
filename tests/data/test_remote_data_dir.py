"""A TFDS data_dir on gs:// without TensorFlow.

etils.epath sends gs:// paths to TensorFlow's gfile when TensorFlow is installed and to fsspec's
GCS backend (the gcsfs package) otherwise. The test runs a child process with EPATH_USE_TF=false
(what a machine without TensorFlow gets) and an fsspec 'gs' filesystem that keeps the bucket in a
local folder: the data set is built in local staging and copied to gs://, TFDS then finds it
prepared there, and TensorFlow is never imported. Reading the records back is not covered:
array_record opens gs:// files with its own C++ GCS client, which needs the real service.
"""

import os
import subprocess
import sys

import fsspec
from fsspec.implementations.local import LocalFileSystem

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class LocalBucket(LocalFileSystem):
    """gs://<path> stored as <root>/<path> on the local disk (root: env DEEPLAB_FAKE_GCS)."""

    protocol = ("gs", "gcs")
    root_marker = ""

    def __init__(self, *args, finalize_on_close=None, **kwargs):  # gcsfs's keyword, unused here
        super().__init__(*args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
        root = os.environ["DEEPLAB_FAKE_GCS"]
        path = os.fspath(path)
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return path if path.startswith(root) else os.path.join(root, path.lstrip("/"))


def child(bucket_root: str):
    """Runs in the child process: prepare the tiny demo into gs://bucket/tfds, then reopen it."""
    import dataclasses
    import importlib.util

    from deeplab_jax.data import datasets, sources

    if importlib.util.find_spec("gcsfs") is None:  # the error names the extra to install
        try:
            sources.get_builder("deeplab_demo/tiny", "gs://bucket/tfds")
            raise AssertionError("gs:// without gcsfs should fail")
        except ImportError as error:
            assert "deeplab-jax[gcs]" in str(error), error
    for protocol in LocalBucket.protocol:
        fsspec.register_implementation(protocol, LocalBucket, clobber=True)

    descriptor = dataclasses.replace(datasets.get_dataset("demo"), tfds_name="deeplab_demo/tiny")
    built = sources.prepare(descriptor, "gs://bucket/tfds")
    reopened = sources.get_builder("deeplab_demo/tiny", "gs://bucket/tfds")
    assert built.is_prepared() and reopened.is_prepared()
    assert {s: i.num_examples for s, i in reopened.info.splits.items()} == {"train": 48, "val": 16}
    assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    version_dir = os.path.join(bucket_root, "bucket/tfds/deeplab_demo/tiny/1.1.0")
    print("OK", sorted(os.listdir(version_dir)))


def test_gs_data_dir_is_built_in_staging_and_copied_without_tensorflow(tmp_path):
    env = dict(os.environ, EPATH_USE_TF="false", DEEPLAB_FAKE_GCS=str(tmp_path / "gcs"),
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = ("import sys; from tests.data import test_remote_data_dir as t; "
            "t.child(sys.argv[1])")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "gcs")], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    listing = result.stdout.strip().splitlines()[-1]
    for name in ("dataset_info.json", "features.json", "deeplab_demo-train.array_record"):
        assert name in listing
