"""Workdir outputs on an object store, without touching the local disk.

A fake `gs://` (fsspec's in-memory filesystem behind epath), in process: metrics.jsonl (rewritten
whole, no append), TensorBoard event files (parts rewritten at flush), config.json, label PNGs and
overlay JPEGs, the resume truncation and read_metrics, through `gs://bucket/...` paths, with no
'gs:' directory created locally.

A GCS emulator (`gcp-storage-emulator`, in memory on 127.0.0.1), for what the fake cannot serve:
orbax's checkpoints, whose arrays tensorstore writes with its own GCS driver and whose steps orbax
lists with google-cloud-storage. `python -m deeplab_jax.main` trains the tiny config with
`--workdir=gs://...`, then resumes past a damaged checkpoint (restoring the previous one from the
bucket, setting the damaged one aside there), then `deeplab_jax.evaluate` reads the result; every
output is checked in the bucket and the subprocesses' working and temporary directories stay
empty. epath reaches the emulator through gcsfs: with TensorFlow installed it would use
tf.io.gfile, which has no emulator endpoint, so that path is not covered.
"""

import functools
import json
import os
import socket
import subprocess
import sys

import jax
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


# --- A whole run against a GCS emulator -------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _serve_generation_headers(server_lib, objects):
    """Makes the emulator's downloads carry the object's generation (x-goog-generation), as GCS's
    do: tensorstore's conditional writes of the OCDBT manifest (orbax's array store) need it, and
    fail with "Malformed StorageGeneration" without it."""
    from gcp_storage_emulator.exceptions import NotFound

    original = getattr(objects.download, "__wrapped__", objects.download)

    @functools.wraps(original)
    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"],
                                       request.params["object_id"])
            response["x-goog-generation"] = obj["generation"]
        except NotFound:  # the original answers 404
            pass
        return original(request, response, storage, *args, **kwargs)

    objects.download = download  # the JSON API's ?alt=media route calls it by name
    for _, handlers in server_lib.HANDLERS:  # the download routes hold the function itself
        for method, handler in handlers.items():
            if handler is original:
                handlers[method] = download


@pytest.fixture
def gcs_emulator():
    """(URL, GCS client) of an in-memory GCS emulator on 127.0.0.1 with one bucket, 'bucket'."""
    pytest.importorskip("gcsfs")
    gcs = pytest.importorskip("google.cloud.storage")
    server_lib = pytest.importorskip("gcp_storage_emulator.server")
    from gcp_storage_emulator.handlers import objects
    from google.auth.credentials import AnonymousCredentials

    _serve_generation_headers(server_lib, objects)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = server_lib.create_server("127.0.0.1", port, in_memory=True, default_bucket="bucket")
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = gcs.Client(project="test", credentials=AnonymousCredentials(),
                        client_options={"api_endpoint": url})
    yield url, client
    server.stop()


def _emulator_env(url, tmp_path):
    env = dict(os.environ)
    env.update({
        # tensorstore (orbax's array writer): its GCS driver's endpoint, and a fixed bearer token
        # instead of looking for Google credentials.
        "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
        # google-cloud-storage (orbax lists and inspects the bucket) and gcsfs (epath): the
        # emulator, anonymously (fsspec reads FSSPEC_<PROTOCOL>_<OPTION> into gcsfs's options).
        "STORAGE_EMULATOR_HOST": url, "FSSPEC_GCS_TOKEN": "anon",
        # gcsfs would ask the bucket's layout through the Storage Control gRPC API, which the
        # emulator does not serve (the call hangs); a real bucket answers it.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        # epath would use tf.io.gfile for gs:// when TensorFlow is installed; it has no emulator
        # endpoint, so this run goes through gcsfs, the `gcs` extra's backend.
        "EPATH_USE_TF": "false",
        "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""),
        "TMPDIR": str(tmp_path / "tmp"),
        "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or "",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
    })
    return env


def _local_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)


def test_train_resume_and_evaluate_on_a_gs_workdir(gcs_emulator, demo_data_dir, tmp_path):
    """Train, resume past a damaged checkpoint, evaluate: every output in the bucket."""
    url, client = gcs_emulator
    run_dir = "runs/tiny"
    (tmp_path / "cwd").mkdir()
    (tmp_path / "tmp").mkdir()
    env = _emulator_env(url, tmp_path)
    flags = [f"--config={os.path.join(REPO, 'configs', 'demo.py')}:tiny",
             f"--workdir=gs://bucket/{run_dir}", f"--config.dataset.data_dir={demo_data_dir}",
             "--config.progress_bar=False", "--config.predict.num_images=1"]

    def run(module):
        result = subprocess.run([sys.executable, "-m", module, *flags], cwd=tmp_path / "cwd",
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    def names():
        return [b.name.removeprefix(run_dir + "/") for b in client.list_blobs("bucket")]

    run("deeplab_jax.main")  # 6 steps, checkpoints 3 and 6
    assert {n.split("/")[1] for n in names() if n.startswith("checkpoints/")} == {"3", "6"}
    # Damage checkpoint 6: the resumed run must restore 3 from the bucket and set 6 aside there.
    manifests = [n for n in names() if n.startswith("checkpoints/6/state/")
                 and n.endswith("manifest.ocdbt")]
    assert manifests
    client.bucket("bucket").delete_blobs([f"{run_dir}/{n}" for n in manifests])
    resumed = run("deeplab_jax.main")
    assert "restored checkpoint of step 3" in resumed.stderr
    assert "moved the damaged checkpoint 6" in resumed.stderr
    evaluated = run("deeplab_jax.evaluate")

    stored = names()
    assert {n.split("/")[1] for n in stored if n.startswith("checkpoints/")} == {"3", "6"}
    for item in ("state", "data", "integrity"):
        assert any(n.startswith(f"checkpoints/6/{item}/") for n in stored), item
    aside = [n for n in stored if n.startswith("checkpoints_corrupt/6-")]
    assert any(n.endswith("/REASON.txt") for n in aside) and any("/state/" in n for n in aside)
    assert "config.json" in stored
    assert any(n.startswith("tensorboard/events.out.tfevents") for n in stored)
    assert any(n.startswith("predictions/") and n.endswith(".png") for n in stored)
    metrics = client.bucket("bucket").blob(f"{run_dir}/metrics.jsonl").download_as_text()
    records = [json.loads(line) for line in metrics.splitlines()]
    val = [r for r in records if r["split"] == "val"]
    train = [r["step"] for r in records if r["split"] == "train"]
    # Training's evals at 3 and 6 (the first run's 6 dropped on resume), then evaluate's own
    # record of checkpoint 6, with the same mIoU.
    assert train == [2, 4, 6] and [r["step"] for r in val] == [3, 6, 6]
    assert f"val mIoU {val[1]['miou']:.4f}" in evaluated.stdout
    # Nothing on the local disk: no files in the working or temporary directory (a 'gs:'
    # directory would be the workdir taken for a local path), none beside the repository.
    assert _local_files(tmp_path / "cwd") == [] and _local_files(tmp_path / "tmp") == []
    assert not os.path.exists(os.path.join(REPO, "gs:"))
