"""Fault injection on weight files: hostile pickles, escaping archives, non-finite weights.

A hostile file must be refused with a clear error before any of its code runs (a marker file that
its pickle would create never appears), an archive member that could write outside the
extraction directory refuses the whole archive (nothing is written outside), and weights holding
NaN or infinity are refused by every loader that evaluation, prediction and training use, naming
the file.
"""

import io
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest

from deeplab_jax import weights
from deeplab_jax.weights import download, zoo
from deeplab_jax.weights.fetch import fetch

from tests.helpers import file_server
from tests.helpers.weights_reference import TINY_V2, torch_or_skip

MODEL = "deeplab_v2_resnet101_aspp_l"


class CreatesMarker:
    """Unpickling calls open(marker, 'w'): the file appears if anything unpickles it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _hostile_pth(marker):
    torch = torch_or_skip()
    buffer = io.BytesIO()
    torch.save({"base.layer1.conv1.conv.weight": CreatesMarker(marker)}, buffer)
    data = buffer.getvalue()
    # The payload is real: plain pickle (what torch.load(weights_only=False) does) runs it.
    assert b"open" in data
    return data


def test_the_payload_would_run_if_unpickled(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(CreatesMarker(marker))).close()
    assert marker.exists()


def test_a_hostile_pth_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "deeplabv2.pth"
    path.write_bytes(_hostile_pth(marker))
    with pytest.raises(weights.WeightImportError, match="weights_only"):
        weights.import_weights("kazuto", path, MODEL, 21, **TINY_V2)
    assert not marker.exists()


def test_a_hostile_npz_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "variables.npz"
    payload = np.empty(1, dtype=object)
    payload[0] = CreatesMarker(marker)
    np.savez(path, **{"params/head/c0/kernel": payload})
    with pytest.raises(weights.WeightImportError, match="variables.npz.*pickled"):
        weights.load_variables(path)
    assert not marker.exists()


def _release(url, **fields):
    return zoo.Release(name="hostile", description="test", url=url, source="kazuto", model=MODEL,
                       num_classes=21, dataset="voc2012_trainaug", overrides=dict(TINY_V2),
                       facts="test", **fields)


def _tar_gz(members):
    """A .tar.gz of TarInfo-or-(name, bytes) members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_hostile_pth_inside_a_downloaded_archive_is_refused(tmp_path):
    marker = tmp_path / "ran"
    served = file_server.serve(
        {"release.tar.gz": _tar_gz([("release/deeplabv2.pth", _hostile_pth(marker))])})
    try:
        release = _release(served.url("release.tar.gz"), archive="tar.gz",
                           member="deeplabv2.pth")
        with pytest.raises(weights.WeightImportError, match="weights_only"):
            fetch(release, tmp_path / "out" / "v2", progress=False)
    finally:
        served.close()
    assert not marker.exists()
    assert os.listdir(tmp_path / "out") == []  # no output, no download, no unpacked files


def _link(name, target, kind):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


ESCAPING_TARS = {
    "dot-dot": [("../escaped.caffemodel", b"x")],
    "absolute": [("/tmp/escaped.caffemodel", b"x")],
    "symlink out": [_link("release/train.caffemodel", "../../escaped.caffemodel", tarfile.SYMTYPE)],
    "absolute symlink": [_link("release/train.caffemodel", "/etc/passwd", tarfile.SYMTYPE)],
    "hardlink out": [_link("release/train.caffemodel", "../escaped.caffemodel", tarfile.LNKTYPE)],
}


@pytest.mark.parametrize("case", sorted(ESCAPING_TARS))
def test_tar_members_escaping_the_directory_refuse_the_archive(tmp_path, case):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_gz([("release/ok.txt", b"fine")] + ESCAPING_TARS[case]))
    target = tmp_path / "deep" / "unpacked"
    with pytest.raises(download.FetchError, match="refusing the archive"):
        download.extract(archive, target, "train.caffemodel", "tar.gz")
    assert not (tmp_path / "deep" / "escaped.caffemodel").exists()
    assert not (tmp_path / "escaped.caffemodel").exists()
    assert not os.listdir(target)  # checked before anything is written


def test_links_inside_the_directory_are_accepted(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_gz([("release/train.caffemodel", b"weights"),
                                 _link("release/latest.caffemodel", "train.caffemodel",
                                       tarfile.SYMTYPE)]))
    paths = download.extract(archive, tmp_path / "unpacked", "train.caffemodel", "tar.gz")
    assert [open(p, "rb").read() for p in paths] == [b"weights"]


@pytest.mark.parametrize("name", ["../escaped.caffemodel", "/abs/escaped.caffemodel",
                                  "a/../../escaped.caffemodel", "C:/escaped.caffemodel"])
def test_zip_members_escaping_the_directory_refuse_the_archive(tmp_path, name):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr(zipfile.ZipInfo(name), b"x")
    with pytest.raises(download.FetchError, match="refusing the archive"):
        download.extract(archive, tmp_path / "deep" / "unpacked", "escaped.caffemodel", "zip")
    assert not (tmp_path / "deep" / "escaped.caffemodel").exists()
    assert not (tmp_path / "escaped.caffemodel").exists()


def test_a_zip_symlink_out_of_the_directory_refuses_the_archive(tmp_path):
    archive = tmp_path / "a.zip"
    info = zipfile.ZipInfo("release/train.caffemodel")
    info.external_attr = (0o120777 << 16)  # a symbolic link; its content is the target
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "../../../etc/passwd")
    with pytest.raises(download.FetchError, match="links to"):
        download.extract(archive, tmp_path / "unpacked", "train.caffemodel", "zip")


def _demo_variables(value):
    from deeplab_jax import models

    import jax

    model = models.get_model("deeplab_v2_demo", 4)
    variables = jax.device_get(jax.jit(model.init)(jax.random.key(0), np.zeros((1, 17, 17, 3))))
    variables["params"]["head"]["c0"]["bias"] = np.full_like(
        variables["params"]["head"]["c0"]["bias"], value)
    return variables


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused_by_every_loader(tmp_path, value):
    from deeplab_jax import predict
    from deeplab_jax.weights import model_info
    from orbax import checkpoint as ocp

    variables = _demo_variables(value)
    with pytest.raises(weights.WeightImportError, match="NaN or infinite.*head/c0/bias"):
        weights.save_variables(tmp_path / "refused", variables)  # never written
    assert not (tmp_path / "refused").exists()
    # Written by other means: an .npz, and an orbax directory with its model info.
    weights.save_npz(tmp_path / "bad.npz", variables)
    with pytest.raises(weights.WeightImportError, match=r"bad\.npz.*NaN or infinite"):
        weights.load_variables(tmp_path / "bad.npz")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "bad", variables)
    checkpointer.wait_until_finished()
    info = model_info.make_model_info("deeplab_v2_demo", 4, {}, "test", "-", dataset="demo")
    (tmp_path / "bad" / weights.MODEL_INFO_FILE).write_text(__import__("json").dumps(info))
    for load in (weights.load_variables, weights.load_model, predict.load_weights):
        with pytest.raises(weights.WeightImportError, match=rf"{tmp_path / 'bad'}.*NaN"):
            load(tmp_path / "bad")
