"""Public releases download themselves: a local HTTP server serves fake archives in the official
layouts under the official names, and datasets.ARCHIVES is pointed at it.

VOC 2012 goes through TFDS's SHA-256 check (a test checksums file in the TFDS format stands in for
builders/checksums.tsv); SBD, the PASCAL-Context labels and the COCO-Stuff maps through the
published size / MD5 checks (or none), as for the real releases.
"""

import dataclasses
import functools
import hashlib
import http.server
import io
import os
import shutil
import tarfile
import threading
import zipfile

import numpy as np
import pytest
from tensorflow_datasets.core.download import checksums as tfds_checksums

from deeplab_jax.data import datasets, sources
from deeplab_jax.data.builders import files, voc
from deeplab_jax.data.builders.validation import ArchiveError
from tests.helpers import official_layouts as layouts


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the server's folder; names in server.truncate get their full Content-Length but
    only that many bytes (a connection dropped mid-transfer)."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        name = self.path.lstrip("/")
        if name not in self.server.truncate:
            return super().do_GET()
        data = open(os.path.join(self.directory, name), "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: self.server.truncate[name]])
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(folder served, base URL, server); serve files by writing them into the folder."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    httpd.truncate = {}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", httpd
    httpd.shutdown()
    httpd.server_close()


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def _redirect(monkeypatch, key, base, **published):
    """Points datasets.ARCHIVES[key] at the test server (size / md5: what the source publishes)."""
    archive = datasets.ARCHIVES[key]
    monkeypatch.setitem(datasets.ARCHIVES, key, dataclasses.replace(
        archive, urls=(f"{base}/{archive.filename}",), size=published.get("size"),
        md5=published.get("md5")))
    return f"{base}/{archive.filename}"


def _register_sha256(monkeypatch, tmp_path, builder_class, url, path, sha256=None):
    """A checksums file in the TFDS format (URL, size, sha256, file name), read as TFDS reads
    builders/checksums.tsv, standing in for it."""
    table = tmp_path / "checksums.tsv"
    table.write_text(f"{url}\t{os.path.getsize(path)}\t{sha256 or _sha256(path)}\t"
                     f"{os.path.basename(path)}\n")
    monkeypatch.setattr(builder_class, "url_infos", tfds_checksums.load_url_infos(table))


def _serve_voc(tmp_path, rng, served):
    """The fake VOC + SBD releases as VOCtrainval_11-May-2012.tar and benchmark.tgz."""
    tree = tmp_path / "release"
    truth = layouts.write_voc(tree, rng, with_sbd=True)
    voc_tar = layouts.archive(tree, ["VOCdevkit"], served / "VOCtrainval_11-May-2012.tar")
    sbd_tgz = layouts.archive(tree, ["benchmark_RELEASE"], served / "benchmark.tgz")
    return truth, voc_tar, sbd_tgz


def _no_prepared_version(data_dir):
    return not any(path.name == "dataset_info.json" for path in data_dir.rglob("*")) \
        if data_dir.exists() else True


def test_voc_trainaug_builds_from_the_download(tmp_path, rng, server, monkeypatch):
    served, base, _ = server
    truth, voc_tar, sbd_tgz = _serve_voc(tmp_path, rng, served)
    voc_url = _redirect(monkeypatch, "voc2012", base)
    _redirect(monkeypatch, "sbd", base, size=os.path.getsize(sbd_tgz), md5=_md5(sbd_tgz))
    _register_sha256(monkeypatch, tmp_path, voc.Voc2012Segmentation, voc_url, voc_tar)
    descriptor = datasets.get_dataset("voc2012_trainaug")
    train = sources.load_split(descriptor, "train", str(tmp_path / "tfds"))  # no manual dir
    assert len(train) == 8
    for index in range(len(train)):
        record = train[index]
        expected = truth["labels"].get(record["image_id"],
                                       truth["sbd_labels"].get(record["image_id"]))
        np.testing.assert_array_equal(record["label"], expected)
    downloaded = {path.name for path in (tmp_path / "tfds" / "downloads").rglob("*.tar")}
    assert any("VOCtrainval_11-May-2012" in name for name in downloaded)


def test_checksum_mismatch_names_file_url_and_hashes_then_retry_succeeds(tmp_path, rng, server,
                                                                         monkeypatch):
    served, base, _ = server
    _, voc_tar, _ = _serve_voc(tmp_path, rng, served)
    url = _redirect(monkeypatch, "voc2012", base)
    wrong = "0" * 64
    _register_sha256(monkeypatch, tmp_path, voc.Voc2012Segmentation, url, voc_tar, wrong)
    descriptor = datasets.get_dataset("voc2012")
    data_dir = tmp_path / "tfds"
    with pytest.raises(ArchiveError) as error:
        sources.prepare(descriptor, str(data_dir))
    message = str(error.value)
    for expected in ("VOCtrainval_11-May-2012.tar", url, wrong, _sha256(voc_tar)):
        assert expected in message
    assert _no_prepared_version(data_dir)
    _register_sha256(monkeypatch, tmp_path, voc.Voc2012Segmentation, url, voc_tar)
    assert sources.prepare(descriptor, str(data_dir)).is_prepared()


def test_truncated_transfer_is_an_error_and_a_retry_downloads_again(tmp_path, rng, server,
                                                                   monkeypatch):
    served, base, httpd = server
    _, voc_tar, _ = _serve_voc(tmp_path, rng, served)
    url = _redirect(monkeypatch, "voc2012", base)
    _register_sha256(monkeypatch, tmp_path, voc.Voc2012Segmentation, url, voc_tar)
    httpd.truncate["VOCtrainval_11-May-2012.tar"] = os.path.getsize(voc_tar) // 2
    descriptor = datasets.get_dataset("voc2012")
    data_dir = tmp_path / "tfds"
    with pytest.raises(ArchiveError, match="could not download VOCtrainval_11-May-2012.tar"
                       ) as error:
        sources.prepare(descriptor, str(data_dir))
    assert url in str(error.value)
    assert _no_prepared_version(data_dir)
    assert not list((data_dir / "downloads").rglob("*.tmp.*"))  # no partial file left behind
    del httpd.truncate["VOCtrainval_11-May-2012.tar"]
    assert sources.prepare(descriptor, str(data_dir)).is_prepared()


def test_truncated_archive_without_hash_is_deleted_and_a_retry_succeeds(tmp_path, rng, server,
                                                                       monkeypatch):
    """SBD publishes no SHA-256: a truncated benchmark.tgz arrives whole, fails to extract, is
    deleted (not reused by the next run) and named with its URL."""
    served, base, _ = server
    truth, voc_tar, sbd_tgz = _serve_voc(tmp_path, rng, served)
    good = sbd_tgz + ".good"
    shutil.copy(sbd_tgz, good)
    with open(sbd_tgz, "r+b") as stream:
        stream.truncate(os.path.getsize(sbd_tgz) // 2)
    voc_url = _redirect(monkeypatch, "voc2012", base)
    sbd_url = _redirect(monkeypatch, "sbd", base)  # neither size nor MD5 known
    _register_sha256(monkeypatch, tmp_path, voc.Voc2012Segmentation, voc_url, voc_tar)
    descriptor = datasets.get_dataset("voc2012_trainaug")
    data_dir = tmp_path / "tfds"
    with pytest.raises(ArchiveError, match="truncated or corrupt") as error:
        sources.prepare(descriptor, str(data_dir))
    assert sbd_url in str(error.value) and "benchmark" in str(error.value)
    assert _no_prepared_version(data_dir)
    shutil.copy(good, sbd_tgz)
    assert len(sources.load_split(descriptor, "train", str(data_dir))) == 8


def test_published_md5_mismatch_is_named(tmp_path, rng, server, monkeypatch):
    served, base, _ = server
    _, voc_tar, sbd_tgz = _serve_voc(tmp_path, rng, served)
    voc_url = _redirect(monkeypatch, "voc2012", base)
    _redirect(monkeypatch, "sbd", base, md5="f" * 32)
    _register_sha256(monkeypatch, tmp_path, voc.Voc2012Segmentation, voc_url, voc_tar)
    with pytest.raises(ArchiveError, match=f"has MD5 {_md5(sbd_tgz)}; the published MD5 is f+"):
        sources.prepare(datasets.get_dataset("voc2012_trainaug"), str(tmp_path / "tfds"))


def test_unreachable_url_falls_back_to_the_mirror(tmp_path, rng, server, monkeypatch):
    served, base, _ = server
    _, voc_tar, _ = _serve_voc(tmp_path, rng, served)
    mirror = _redirect(monkeypatch, "voc2012", base)
    dead = f"{base}/missing/VOCtrainval_11-May-2012.tar"  # 404
    monkeypatch.setitem(datasets.ARCHIVES, "voc2012", dataclasses.replace(
        datasets.ARCHIVES["voc2012"], urls=(dead, mirror)))
    _register_sha256(monkeypatch, tmp_path, voc.Voc2012Segmentation, mirror, voc_tar)
    assert sources.prepare(datasets.get_dataset("voc2012"), str(tmp_path / "tfds")).is_prepared()


def test_context_and_coco_stuff_build_from_the_download(tmp_path, rng, server, monkeypatch):
    served, base, _ = server
    tree = tmp_path / "release"
    layouts.write_context(tree, rng, {i: rng.integers(0, 460, (layouts.HEIGHT, layouts.WIDTH))
                                      for i in layouts.CONTEXT_TRAIN + layouts.CONTEXT_VAL})
    layouts.archive(tree, ["trainval"], served / "trainval.tar.gz")
    layouts.archive(tree, ["VOCdevkit"], served / "VOCtrainval_03-May-2010.tar")
    layouts.write_coco_stuff(tree, rng, {
        "train2017": {"000000000009": np.zeros((layouts.HEIGHT, layouts.WIDTH), np.uint8)},
        "val2017": {"000000000139": np.full((layouts.HEIGHT, layouts.WIDTH), 255, np.uint8)}})
    for folder in ("train2017", "val2017"):
        layouts.archive(tree / "images", [folder], served / f"{folder}.zip")
    layouts.archive(tree / "stuffthingmaps_trainval2017", ["train2017", "val2017"],
                    served / "stuffthingmaps_trainval2017.zip")
    for key in datasets.CONTEXT_DOWNLOADS + datasets.COCO_STUFF_DOWNLOADS:
        _redirect(monkeypatch, key, base)
    context = sources.prepare(datasets.get_dataset("pascal_context"), str(tmp_path / "tfds"))
    assert {s: i.num_examples for s, i in context.info.splits.items()} == {"train": 3, "val": 2}
    coco = sources.prepare(datasets.get_dataset("coco_stuff164k"), str(tmp_path / "tfds"))
    assert {s: i.num_examples for s, i in coco.info.splits.items()} == {"train": 1, "val": 1}


def test_a_given_manual_dir_is_used_not_the_download(tmp_path, rng, monkeypatch):
    """With a manual directory nothing is fetched: the archive URLs point nowhere."""
    monkeypatch.setitem(datasets.ARCHIVES, "voc2012", dataclasses.replace(
        datasets.ARCHIVES["voc2012"], urls=("http://127.0.0.1:9/unreachable.tar",)))
    layouts.write_voc(tmp_path / "manual", rng, with_sbd=False)
    builder = sources.prepare(datasets.get_dataset("voc2012"), str(tmp_path / "tfds"),
                              str(tmp_path / "manual"))
    assert builder.info.splits["val"].num_examples == 3


@pytest.mark.parametrize("suffix", [".tar", ".zip"])
@pytest.mark.parametrize("member", ["../escaped.txt", "/tmp/deeplab_jax_absolute_escape.txt",
                                    "VOCdevkit/../../escaped.txt"])
def test_extraction_refuses_members_escaping_the_target(tmp_path, member, suffix):
    bundle = str(tmp_path / f"evil{suffix}")
    if suffix == ".zip":
        with zipfile.ZipFile(bundle, "w") as archive:
            archive.writestr("VOCdevkit/fine.txt", b"x")
            archive.writestr(member, b"x")
    else:
        with tarfile.open(bundle, "w") as archive:
            for name in ("VOCdevkit/fine.txt", member):  # TarInfo keeps the name as written
                info = tarfile.TarInfo(name)
                info.size = 1
                archive.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ArchiveError, match="outside"):
        files.extract_members(bundle, (), str(tmp_path / "out" / "target"))
    assert not (tmp_path / "out" / "escaped.txt").exists()
    assert not os.path.exists("/tmp/deeplab_jax_absolute_escape.txt")


def test_checksums_file_covers_the_archives_it_names():
    """builders/checksums.tsv (TFDS format) names only archives of datasets.ARCHIVES, under their
    official file names; an archive has a SHA-256 there for all of its URLs or for none."""
    recorded = voc.Voc2012Segmentation.url_infos
    for archive in datasets.ARCHIVES.values():
        listed = [url for url in archive.urls if url in recorded]
        assert listed in ([], list(archive.urls)), archive.filename
        for url in listed:
            assert recorded[url].filename == archive.filename
            assert len(recorded[url].checksum) == 64
    urls = {url for archive in datasets.ARCHIVES.values() for url in archive.urls}
    assert set(recorded) <= urls
