"""The convert CLI and the converted-checkpoint format (orbax directory + model info, .npz)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from deeplab_jax import weights
from deeplab_jax.models.backbones.vgg import VGG16_BLOCKS
from deeplab_jax.weights import caffe_proto
from deeplab_jax.weights.mapping import flatten

FC_WIDTH = 16


def _largefov_layers(num_classes, rng):
    """Random DeepLab-LargeFOV Caffe layers (numpy only), in the release's names and shapes."""
    layers, channels = [], 3
    for block, count, width in VGG16_BLOCKS:
        for i in range(1, count + 1):
            layers.append((f"conv{block}_{i}", "Convolution",
                           [rng.normal(size=(width, channels, 3, 3)).astype(np.float32),
                            rng.normal(size=width).astype(np.float32)]))
            channels = width
    for name, cout, cin, k in (("fc6", FC_WIDTH, 512, 3), ("fc7", FC_WIDTH, FC_WIDTH, 1),
                               ("fc8_voc12", num_classes, FC_WIDTH, 1)):
        layers.append((name, "Convolution", [rng.normal(size=(cout, cin, k, k)).astype(np.float32),
                                             rng.normal(size=cout).astype(np.float32)]))
    return layers


def _cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "deeplab_jax.weights.convert", *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def largefov_file(tmp_path_factory):
    layers = _largefov_layers(3, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("caffe") / "largefov.caffemodel"
    caffe_proto.write_caffemodel(path, layers, legacy=True)
    return path, {name: blobs for name, _, blobs in layers}


def test_cli_writes_a_checkpoint_that_loads_back(largefov_file, tmp_path):
    path, blobs = largefov_file
    output = tmp_path / "converted"
    result = _cli("--source=caffe", f"--input={path}", "--model=deeplab_v1_largefov",
                  "--num_classes=3", f"--override=fc_width={FC_WIDTH}", f"--output={output}")
    assert result.returncode == 0, result.stderr
    assert "32 tensors imported, 0 missing" in result.stdout

    variables = weights.load_variables(output)
    flat = flatten(variables)
    np.testing.assert_array_equal(flat["params/head/fc8/kernel"],
                                  blobs["fc8_voc12"][0].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(flat["params/backbone/conv3_2/bias"], blobs["conv3_2"][1])
    info = weights.load_model_info(output)
    assert info["model"] == "deeplab_v1_largefov" and info["overrides"] == {"fc_width": FC_WIDTH}

    model, restored = weights.load_model(output)
    images = np.random.default_rng(1).uniform(0, 255, (1, 41, 41, 3)).astype(np.float32)
    assert model.apply(restored, images).shape == (1, 6, 6, 3)

    # The same variables as an .npz.
    weights.save_npz(tmp_path / "v.npz", variables)
    again = flatten(weights.load_variables(tmp_path / "v.npz"))
    assert set(again) == set(flat)
    np.testing.assert_array_equal(again["params/head/fc6/kernel"], flat["params/head/fc6/kernel"])

    # orbax never overwrites: a second run into the same directory fails cleanly.
    result = _cli("--source=caffe", f"--input={path}", "--model=deeplab_v1_largefov",
                  "--num_classes=3", f"--override=fc_width={FC_WIDTH}", f"--output={output}")
    assert result.returncode == 1 and "already exists" in result.stderr


def test_cli_reports_what_does_not_fit(largefov_file, tmp_path):
    path, _ = largefov_file
    result = _cli("--source=caffe", f"--input={path}", "--model=deeplab_v1_largefov",
                  "--num_classes=3", f"--output={tmp_path / 'out'}")  # fc width 1024 != 16
    assert result.returncode == 1
    assert "fc6[0] -> params/head/fc6/kernel: shape" in result.stderr
    assert not (tmp_path / "out").exists()


def test_load_variables_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        weights.load_variables(tmp_path / "absent")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(weights.WeightImportError, match="bad.npz"):
        weights.load_variables(tmp_path / "bad.npz")
