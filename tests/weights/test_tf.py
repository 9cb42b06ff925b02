"""TF checkpoint import (DeepLab-v3+ Xception-65 scopes), with TensorFlow writing the checkpoint.

TensorFlow writes the checkpoint (in a subprocess). Truths: the arrays written under the release's
slim scope names (every imported tensor), TF's own checkpoint reader (against our numpy reader),
and TF's depthwise/pointwise convolutions + batch norm run with the checkpoint's layout against our
separable conv with the imported variables.
"""

import importlib.util
import sys

import jax
import numpy as np
import pytest

from deeplab_jax import models
from deeplab_jax.models.layers import NormConfig
from deeplab_jax.models.separable import SeparableConvBN
from deeplab_jax.weights import WeightImportError, import_weights, tf_bundle
from deeplab_jax.weights.mapping import flatten

from tests.helpers.weights_reference import relative_error, tf_scope_name, write_tf_checkpoint

TF_MISSING = "TensorFlow is not installed (pip install 'deeplab-jax[tf]'); it writes the checkpoint"
MODEL = "deeplab_v3plus_xception65"
SMALL = dict(middle_repeats=2, width_multiplier=0.25)


# Run after TensorFlow wrote the checkpoint, in its process (`write_tf_checkpoint`): the importer
# itself reads checkpoints without TF.
_TF_CHECKS = """
from deeplab_jax.weights import tf_bundle

work = prefix.rsplit("/", 1)[0]
# TF's own reader and ours agree on every tensor.
reader = tf.train.load_checkpoint(prefix)
ours = tf_bundle.read_bundle(prefix)
assert sorted(ours) == sorted(reader.get_variable_to_shape_map()), sorted(ours)
for name in ours:
    np.testing.assert_array_equal(ours[name], reader.get_tensor(name), err_msg=name)

# TF's depthwise + pointwise convolutions and batch norm on the checkpoint's layout.
scope = "xception_65/entry_flow/block1/unit_1/xception_module/separable_conv1"
x = np.load(work + "/x.npy")
def bn(y, part):
    get = lambda k: tensors[f"{scope}_{part}/BatchNorm/{k}"]
    return tf.nn.batch_normalization(y, get("moving_mean"), get("moving_variance"), get("beta"),
                                     get("gamma"), 1e-3)
y = bn(tf.nn.depthwise_conv2d(x, tensors[f"{scope}_depthwise/depthwise_weights"], [1, 1, 1, 1],
                              "SAME"), "depthwise")
y = bn(tf.nn.conv2d(y, tensors[f"{scope}_pointwise/weights"], 1, "SAME"), "pointwise")
np.save(work + "/reference.npy", y.numpy())
"""
SEPARABLE_SCOPE = "xception_65/entry_flow/block1/unit_1/xception_module/separable_conv1"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(checkpoint prefix, {our path: expected array}, {TF name: array}, x, TF's output)."""
    if importlib.util.find_spec("tensorflow") is None:  # found, not imported
        pytest.skip(TF_MISSING)
    model = models.get_model(MODEL, 5, **SMALL)
    template = flatten(jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, 33, 33, 3), np.float32))))
    rng = np.random.default_rng(0)
    expected, tensors = {}, {}
    for path, leaf in template.items():
        value = rng.normal(size=leaf.shape).astype(np.float32)
        if path.endswith("/var"):
            value = np.abs(value) + 0.5
        expected[path] = value
        name = tf_scope_name(path)
        # Depthwise kernels: ours (k, k, 1, C), TF's (k, k, C, 1).
        tensors[name] = value.transpose(0, 1, 3, 2) if name.endswith("depthwise_weights") else value
    tensors["global_step"] = np.array(30000, np.int64)
    tensors["aspp0/weights/Momentum"] = np.zeros((1, 1, 4, 4), np.float32)
    tensors["xception_65/logits/weights"] = np.zeros((1, 1, 8, 1001), np.float32)
    work = tmp_path_factory.mktemp("tf")
    channels = tensors[f"{SEPARABLE_SCOPE}_depthwise/depthwise_weights"].shape[2]
    x = rng.normal(size=(2, 11, 11, channels)).astype(np.float32)
    np.save(work / "x.npy", x)
    write_tf_checkpoint(work / "model.ckpt-30000", tensors, then=_TF_CHECKS)
    return work / "model.ckpt-30000", expected, tensors, x, np.load(work / "reference.npy")


def test_every_tensor_of_a_slim_checkpoint_is_imported(checkpoint):
    prefix, expected, *_ = checkpoint
    variables, report = import_weights("tf", prefix, MODEL, 5, **SMALL)
    flat = flatten(variables)
    assert set(flat) == set(expected) and not report.missing and not report.unused
    for path, value in expected.items():
        np.testing.assert_array_equal(flat[path], value, err_msg=path)
    assert {name for name, _ in report.ignored} == {
        "global_step", "aspp0/weights/Momentum", "xception_65/logits/weights"}
    assert "tensorflow" not in sys.modules  # read by tf_bundle, in numpy


def test_separable_conv_matches_tensorflow(checkpoint):
    prefix, _, tensors, x, reference = checkpoint
    variables, _ = import_weights("tf", prefix, MODEL, 5, **SMALL)
    unit = ("backbone", "entry_flow", "block1", "unit1", "separable_conv1")

    def pick(collection):
        node = variables[collection]
        for key in unit:
            node = node[key]
        return node

    features = tensors[f"{SEPARABLE_SCOPE}_pointwise/weights"].shape[-1]
    module = SeparableConvBN(features, depthwise_relu=False, relu=False,
                             norm=NormConfig(frozen=True, epsilon=1e-3))
    ours = module.apply({"params": pick("params"), "batch_stats": pick("batch_stats")}, x)
    assert relative_error(ours, reference) <= 1e-5


def test_snappy_block_hand_encoded():
    # length 12; literal "abcd" (tag (4-1)<<2); copy of 8 bytes at offset 4 (tag (8-4)<<2 | 1).
    block = bytes([12, 3 << 2]) + b"abcd" + bytes([(4 << 2) | 1, 4])
    assert tf_bundle.snappy_decompress(block) == b"abcdabcdabcd"
    with pytest.raises(tf_bundle.BundleFormatError):
        tf_bundle.snappy_decompress(bytes([12, 3 << 2]) + b"abcd" + bytes([(4 << 2) | 1, 9]))


def test_missing_or_broken_checkpoint_gives_a_clean_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # no fallback to TF's reader here
    broken = tmp_path / "model.ckpt"
    (tmp_path / "model.ckpt.index").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightImportError, match=str(broken)):
        import_weights("tf", broken, MODEL, 5, **SMALL)
    with pytest.raises(WeightImportError, match="does not exist"):
        import_weights("tf", tmp_path / "absent.ckpt", MODEL, 5, **SMALL)
