"""Workdir outputs on an object store: a fake `gs://` (fsspec's in-memory filesystem behind epath).

What this covers: metrics.jsonl (rewritten whole, no append), TensorBoard event files (parts
rewritten at flush), config.json, label PNGs and overlay JPEGs, the resume truncation and
read_metrics, all through `gs://bucket/...` paths, with nothing written to the local disk (no
'gs:' directory). Not covered here: orbax checkpoints, whose arrays tensorstore writes with its
own GCS driver (not through fsspec/epath), so they cannot be pointed at this fake bucket.
"""

import os

import numpy as np
import pytest
from etils import epath
from etils.epath import backend, gpath
from fsspec import register_implementation
from fsspec.implementations.memory import MemoryFileSystem

from deeplab_jax import storage
from deeplab_jax.serving import visualize
from deeplab_jax.train import events
from deeplab_jax.train.metric_writer import MetricWriter, read_metrics
from tests.train.test_metric_writer import decode_events


class FakeGCS(MemoryFileSystem):
    """gs:// paths kept in memory, with a store of its own."""

    protocol = ("gs", "gcs")
    store = {}
    pseudo_dirs = [""]

    def __init__(self, *args, **kwargs):  # epath passes gcsfs options (finalize_on_close)
        super().__init__()

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return "/" + path.strip("/")


@pytest.fixture
def fake_gcs(monkeypatch, tmp_path):
    FakeGCS.store.clear()
    FakeGCS.pseudo_dirs[:] = [""]
    for name in FakeGCS.protocol:
        register_implementation(name, FakeGCS, clobber=True)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # epath: fsspec, not tf.gfile
    backend.fsspec_backend._get_filesystem.cache_clear()
    monkeypatch.chdir(tmp_path)
    yield FakeGCS.store
    backend.fsspec_backend._get_filesystem.cache_clear()
    assert os.listdir(tmp_path) == [], "something was written to the local disk"


def test_metrics_events_config_and_pictures_go_to_the_bucket(fake_gcs):
    workdir = "gs://bucket/runs/demo"
    assert str(storage.as_path(workdir)) == workdir  # not <cwd>/gs:/bucket/...
    storage.write_atomic(storage.as_path(workdir) / "config.json", '{"a": 1}')
    with MetricWriter(workdir, enabled=True) as writer:
        writer.write_scalars(2, {"loss": 0.5})
        writer.flush()
        writer.write_scalars(4, {"loss": 0.25})
        writer.write_images(4, {"overlay": np.zeros((8, 8, 3), np.uint8)})
    with MetricWriter(workdir, enabled=True, resume_step=2) as writer:  # resumed from step 2
        writer.write_scalars(4, {"loss": 0.3})
    assert [(r["step"], r["loss"]) for r in read_metrics(workdir)] == [(2, 0.5), (4, 0.3)]
    visualize.save_label_png(f"{workdir}/predictions/a.png", np.eye(5, dtype=np.uint8),
                             np.zeros((256, 3), np.uint8))
    visualize.save_jpeg(f"{workdir}/predictions/a_overlay.jpg", np.zeros((5, 5, 3), np.uint8))
    names = sorted(key.removeprefix("/bucket/runs/demo/") for key in fake_gcs)
    assert names[:3] == ["config.json", "metrics.jsonl", "predictions/a.png"]
    assert names[3] == "predictions/a_overlay.jpg"
    assert len([n for n in names if n.startswith("tensorboard/events.out.tfevents")]) == 2
    assert epath.Path(f"{workdir}/config.json").read_text() == '{"a": 1}'


def test_event_file_parts_bound_each_upload(fake_gcs):
    writer = events.EventFileWriter("gs://bucket/tb", part_bytes=300)
    for step in range(20):
        writer.add(events.Event(step=step, file_version="x" * 50))
        writer.flush()
    writer.close()
    parts = sorted(key for key in fake_gcs if "tfevents" in key)
    assert len(parts) > 3
    steps = []
    for key in parts:
        assert len(fake_gcs[key].getvalue()) < 300 + 100
        local = epath.Path("gs:/" + key).read_bytes()
        steps += [e.step for e in decode_events(local)]
    assert steps == [0] + list(range(20))
