"""fetch: download from a local HTTP server, verify, unpack, convert; the zoo's entries.

Files are served by `tests.helpers.file_server` in the releases' real formats (a kazuto1011 .pth,
the DeepLab-v2 zip with its caffemodels, a TF checkpoint inside a tarball with the model zoo's
layout, written by TensorFlow); zoo entries are pointed at the server.
"""

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile

import jax
import numpy as np
import pytest

from deeplab_jax import models, weights
from deeplab_jax.data import datasets
from deeplab_jax.weights import caffe_proto, download, zoo
from deeplab_jax.weights.fetch import fetch
from deeplab_jax.weights.mapping import flatten

from tests.helpers import file_server
from tests.helpers.weights_reference import (
    TINY_V2,
    TINY_V2_RATES,
    caffe_layers_from_kazuto,
    randomize_torch_,
    tf_scope_name,
    torch_deeplab_v2,
    torch_or_skip,
    torch_state_numpy,
    write_tf_checkpoint,
)

V2_MODEL = "deeplab_v2_resnet101_aspp_l"


@pytest.fixture
def server():
    served = file_server.serve({})
    yield served
    served.close()


def _release(url, **fields):
    base = dict(name="test_release", description="test", url=url, source="kazuto",
                model=V2_MODEL, num_classes=21, dataset="voc2012_trainaug",
                overrides=dict(TINY_V2), facts="test")
    return zoo.Release(**{**base, **fields})


def _kazuto_pth(num_classes=21, seed=3):
    torch = torch_or_skip()
    net = randomize_torch_(torch_deeplab_v2(num_classes, rates=TINY_V2_RATES, **TINY_V2), seed=seed)
    buffer = io.BytesIO()
    torch.save({f"base.{k}": v for k, v in net.state_dict().items()}, buffer)
    return buffer.getvalue(), torch_state_numpy(net)


def _only_output(tmp_path, output):
    """Nothing but the output directory is left beside it (no download, no staging)."""
    assert sorted(os.listdir(tmp_path)) == [output]


def test_a_pth_release_is_downloaded_verified_and_converted(server, tmp_path):
    data, state = _kazuto_pth()
    server.files["deeplabv2.pth"] = data
    digest = hashlib.sha256(data).hexdigest()
    release = _release(server.url("deeplabv2.pth"), sha256=digest,
                       published={"VOC12 val": 76.65})
    output, report = fetch(release, tmp_path / "v2", progress=False)
    assert not report.missing and not report.unused
    info = json.loads((output / "deeplab_model.json").read_text())
    assert info["sha256"] == digest and info["input"] == release.url
    assert info["published"] == {"VOC12 val": 76.65} and info["zoo"] == "test_release"
    assert info["classes"] == list(datasets.VOC_CLASSES) and info["dataset"] == "voc2012_trainaug"
    assert info["layout"]["input_norm"] == "caffe_bgr" and info["layout"]["stride_on_3x3"] is False
    model, variables = weights.load_model(output)
    np.testing.assert_array_equal(variables["params"]["head"]["c1"]["kernel"],
                                  state["aspp.c1.weight"].transpose(2, 3, 1, 0))
    assert model.apply(variables, np.zeros((1, 33, 33, 3), np.float32)).shape == (1, 5, 5, 21)
    _only_output(tmp_path, "v2")


def _caffemodel_bytes(seed):
    """A tiny DeepLab-v2 MSC train net's .caffemodel with the release's layer names."""
    torch_or_skip()
    net = randomize_torch_(torch_deeplab_v2(21, rates=TINY_V2_RATES, **TINY_V2), seed=seed)
    state = torch_state_numpy(net)
    layers = caffe_layers_from_kazuto(state, TINY_V2["stage_sizes"], np.random.default_rng(seed))
    return caffe_proto.serialize_net(layers), state


def test_the_deeplab_v2_zip_yields_the_named_caffemodel(server, tmp_path):
    """prototxt_and_model.zip holds three caffemodels; the entry names the train_aug one."""
    train, state = _caffemodel_bytes(1)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("test.prototxt", "name: 'deeplab'")
        zf.writestr("init.caffemodel", _caffemodel_bytes(2)[0])
        zf.writestr("train_iter_20000.caffemodel", train)
        zf.writestr("train2_iter_20000.caffemodel", _caffemodel_bytes(3)[0])
    server.files["prototxt_and_model.zip"] = buffer.getvalue()
    release = _release(server.url("prototxt_and_model.zip"), source="caffe", archive="zip",
                       member="train_iter_20000.caffemodel", overrides=dict(
                           TINY_V2, msc_scales=(1.0, 0.75, 0.5)))
    output, _ = fetch(release, tmp_path / "v2", progress=False)
    variables = weights.load_variables(output)
    np.testing.assert_array_equal(
        variables["params"]["backbone"]["stem"]["conv1"]["conv"]["kernel"],
        state["layer1.conv1.conv.weight"].transpose(2, 3, 1, 0))
    assert json.loads((output / "deeplab_model.json").read_text())["overrides"]["msc_scales"] == [
        1.0, 0.75, 0.5]
    _only_output(tmp_path, "v2")


XCEPTION = "deeplab_v3plus_xception65"
XCEPTION_SMALL = dict(middle_repeats=2, width_multiplier=0.25)


def test_a_tf_checkpoint_in_a_model_zoo_tarball(server, tmp_path):
    """deeplabv3_pascal_train_aug_2018_01_04.tar.gz: deeplabv3_pascal_train_aug/{model.ckpt.*,
    frozen_inference_graph.pb} (model_zoo.md, local_test.sh)."""
    model = models.get_model(XCEPTION, 21, **XCEPTION_SMALL)
    template = flatten(jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, 33, 33, 3), np.float32))))
    rng = np.random.default_rng(0)
    expected, tensors = {}, {"global_step": np.array(30000, np.int64)}
    for path, leaf in template.items():
        value = rng.normal(size=leaf.shape).astype(np.float32)
        value = np.abs(value) + 0.5 if path.endswith("/var") else value
        expected[path] = value
        name = tf_scope_name(path)
        tensors[name] = value.transpose(0, 1, 3, 2) if name.endswith("depthwise_weights") else value
    folder = tmp_path / "tar" / "deeplabv3_pascal_train_aug"
    folder.mkdir(parents=True)
    write_tf_checkpoint(folder / "model.ckpt", tensors)
    (folder / "frozen_inference_graph.pb").write_bytes(b"\x08\x01graph")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname="deeplabv3_pascal_train_aug")
    server.files["deeplabv3_pascal_train_aug_2018_01_04.tar.gz"] = buffer.getvalue()
    release = dataclasses.replace(
        zoo.ZOO["tf_deeplabv3plus_xception65_voc12"], size_mb=None,
        url=server.url("deeplabv3_pascal_train_aug_2018_01_04.tar.gz"),
        overrides=XCEPTION_SMALL)
    output, report = fetch(release, tmp_path / "out" / "xception", progress=False)
    assert not report.missing and not report.unused
    flat = flatten(weights.load_variables(output))
    for path, value in expected.items():
        np.testing.assert_array_equal(flat[path], value, err_msg=path)
    info = json.loads((output / "deeplab_model.json").read_text())
    assert info["layout"]["input_norm"] == "inception" and info["published"]["VOC12 val, OS16"]
    assert sorted(os.listdir(tmp_path / "out")) == ["xception"]


def test_a_checksum_mismatch_names_url_expected_and_actual(server, tmp_path):
    server.files["w.pth"] = b"not the published file"
    actual = hashlib.sha256(b"not the published file").hexdigest()
    release = _release(server.url("w.pth"), sha256_prefix="586e9e4e")
    with pytest.raises(download.FetchError) as error:
        fetch(release, tmp_path / "out", progress=False)
    message = str(error.value)
    assert release.url in message and "586e9e4e" in message and actual in message
    assert os.listdir(tmp_path) == []  # the bad download is removed, no output directory
    release = _release(server.url("w.pth"), size_mb=233.217, size_tolerance=0.05)
    with pytest.raises(download.FetchError, match=r"size mismatch .* about 233.217 MB"):
        fetch(release, tmp_path / "out", progress=False)


def test_a_truncated_download_is_an_error_and_resumes(server, tmp_path):
    data, _ = _kazuto_pth()
    server.files["w.pth"] = data
    server.truncate["w.pth"] = len(data) // 3
    release = _release(server.url("w.pth"), sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(download.FetchError, match=rf"stopped after {len(data) // 3} of "
                                                  rf"{len(data)} bytes"):
        fetch(release, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert [f for f in os.listdir(tmp_path) if f.endswith(".part")]  # kept for resuming
    del server.truncate["w.pth"]
    output, _ = fetch(release, tmp_path / "out", progress=False)
    assert server.requests[-1] == ("w.pth", f"bytes={len(data) // 3}-")  # resumed
    _only_output(tmp_path, "out")
    assert weights.load_model_info(output)["sha256"] == release.sha256


def test_a_server_without_ranges_restarts_the_download(tmp_path):
    data = b"x" * 1000
    served = file_server.serve({"f.bin": data}, ranges=False)
    try:
        (tmp_path / "f.bin.part").write_bytes(b"garbage")
        path = download.download(served.url("f.bin"), tmp_path / "f.bin", progress=False)
    finally:
        served.close()
    assert open(path, "rb").read() == data


def test_coco_stuff_keeps_the_171_used_of_182_channels(server, tmp_path):
    data, state = _kazuto_pth(num_classes=182)
    server.files["cocostuff.pth"] = data
    base = zoo.ZOO["kazuto_deeplab_v2_cocostuff164k"]
    release = dataclasses.replace(base, url=server.url("cocostuff.pth"),
                                  overrides=dict(base.overrides, **TINY_V2))
    output, _ = fetch(release, tmp_path / "cocostuff", progress=False)
    info = weights.load_model_info(output)
    assert info["num_classes"] == 171 and len(info["classes"]) == 171
    assert info["classes"][:3] == ["person", "bicycle", "car"]
    kept = np.asarray(base.class_channels)
    assert kept[11] == 12  # label value 11 ('-', removed from COCO) is skipped
    variables = weights.load_variables(output)
    np.testing.assert_array_equal(variables["params"]["head"]["c0"]["bias"],
                                  state["aspp.c0.bias"][kept])


def test_zoo_entries_are_consistent():
    for name, release in zoo.ZOO.items():
        assert name == release.name and release.facts and release.url.startswith("http")
        assert release.source in weights.SOURCES and release.model in models.MODELS
        assert set(release.overrides) <= set(models.accepted_overrides(release.model))
        descriptor = datasets.DATASETS[release.dataset]
        classes = len(release.class_channels or ()) or release.num_classes
        assert descriptor.num_classes == classes, name
        assert (release.archive is None) == (release.member is None), name
        if release.kind == "trained":
            assert release.published, name
        if release.sha256_prefix:  # torch.hub convention: <name>-<sha256 prefix>.pth
            assert release.url.rsplit("-", 1)[1].split(".")[0] == release.sha256_prefix
    text = zoo.table()
    assert all(name in text for name in zoo.ZOO) and "not published" in text


def test_the_command_line_fails_cleanly_without_an_output(server, tmp_path):
    """--mirror serves the release's file name from elsewhere; an HTML page is no weight file."""
    server.files["deeplabv2_resnet101_msc-vocaug-20000.pth"] = b"<html>moved</html>"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "deeplab_jax.weights.fetch", "kazuto_deeplab_v2_voc12",
         f"--output={tmp_path / 'v2'}", f"--mirror={server.base}"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "not a readable PyTorch state dict" in result.stderr
    assert os.listdir(tmp_path) == []
    assert server.requests == [("deeplabv2_resnet101_msc-vocaug-20000.pth", None)]
