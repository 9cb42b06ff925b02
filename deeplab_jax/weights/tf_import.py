"""TF models/research/deeplab checkpoints -> our variables (DeepLab-v3+ aligned Xception-65).

The V2 checkpoint format (.index + .data shards) is read in numpy without TensorFlow
(`tf_bundle`); other formats (V1, sliced variables) go through `tf.train.load_checkpoint` when
TensorFlow (the optional extra `deeplab-jax[tf]`) is installed.
The released v3+ models (v3+ paper §4, Table 5; `core/xception.py`, `model.py`) use these scopes:

  xception_65/entry_flow/conv1_1/{weights, BatchNorm/*}          -> backbone/entry_flow/conv1_1
  xception_65/<flow>/block<b>/unit_<u>/xception_module/
      separable_conv<i>_depthwise/{depthwise_weights, BatchNorm/*} -> backbone/<flow>/block<b>/
      separable_conv<i>_pointwise/{weights, BatchNorm/*}              unit<u>/separable_conv<i>/
      shortcut/{weights, BatchNorm/*}                                  {depthwise, pointwise},
                                                                       shortcut
  image_pooling, aspp0, aspp<i>_{depthwise,pointwise}, concat_projection
                                                                 -> head/aspp/...
  decoder/feature_projection0, decoder/decoder_conv<i>_{depthwise,pointwise}
                                                                 -> head/decoder/...
  logits/semantic/{weights, biases}                              -> head/logits/{kernel, bias}

TF kernels are already HWIO; depthwise kernels (k, k, C, 1) become our grouped-conv (k, k, 1, C).
BatchNorm gamma/beta/moving_mean/moving_variance -> scale/bias/mean/var. Training bookkeeping
(global_step, Momentum slots, ExponentialMovingAverage shadows) and the ImageNet classifier
(xception_65/logits) are ignored. The TF ResNet-101 scopes (resnet_v1_101) are not mapped: slim's
ResNet strides in the *last* unit of each block, a layout our ResNet does not build.
"""

import os
import re

import numpy as np

from deeplab_jax.weights import tf_bundle
from deeplab_jax.weights.mapping import Assignment, WeightImportError

TF_HINT = "reading TF checkpoints needs TensorFlow: pip install 'deeplab-jax[tf]' (tensorflow-cpu)"
_BN_LEAVES = {
    "gamma": ("params", "scale"),
    "beta": ("params", "bias"),
    "moving_mean": ("batch_stats", "mean"),
    "moving_variance": ("batch_stats", "var"),
}
_BOOKKEEPING = re.compile(r"(^global_step$|/Momentum$|/ExponentialMovingAverage$|/Adam(_1)?$|"
                          r"^beta[12]_power$)")
_XCEPTION_UNIT = re.compile(
    r"^xception_65/(entry_flow|middle_flow|exit_flow)/block(\d+)/unit_(\d+)/xception_module/"
    r"(separable_conv\d_depthwise|separable_conv\d_pointwise|shortcut)/(.+)$")
_XCEPTION_STEM = re.compile(r"^xception_65/entry_flow/(conv1_[12])/(.+)$")
_ASPP = re.compile(
    r"^(image_pooling|aspp0|concat_projection|aspp\d_depthwise|aspp\d_pointwise)/(.+)$")
_DECODER = re.compile(
    r"^decoder/(feature_projection\d|decoder_conv\d_depthwise|decoder_conv\d_pointwise)/(.+)$")
_SPLIT = re.compile(r"^(.+)_(depthwise|pointwise)$")


def _depthwise_to_ours(kernel_kxkxCx1):
    kernel = np.asarray(kernel_kxkxCx1)
    if kernel.ndim != 4 or kernel.shape[-1] != 1:
        raise WeightImportError(f"expected a (k, k, C, 1) depthwise kernel, got {kernel.shape}")
    return np.ascontiguousarray(np.transpose(kernel, (0, 1, 3, 2)))


def _unit_name(scope):
    """'separable_conv2_depthwise' -> 'separable_conv2/depthwise'; 'aspp0' -> 'aspp0'."""
    match = _SPLIT.match(scope)
    return f"{match.group(1)}/{match.group(2)}" if match else scope


def _leaf_assignment(unit, leaf, source, array):
    """Our ConvBN `unit` <- a slim conv leaf (weights, depthwise_weights, BatchNorm/<stat>)."""
    if leaf == "weights":
        return Assignment(f"params/{unit}/conv/kernel", source, array)
    if leaf == "depthwise_weights":
        return Assignment(f"params/{unit}/conv/kernel", source, array, _depthwise_to_ours)
    if leaf.startswith("BatchNorm/") and leaf[len("BatchNorm/"):] in _BN_LEAVES:
        collection, ours = _BN_LEAVES[leaf[len("BatchNorm/"):]]
        return Assignment(f"{collection}/{unit}/bn/{ours}", source, array)
    return None


def tf_name_assignment(name, array):
    """An Assignment for one checkpoint variable, or None when its name is not a known one."""
    if match := _XCEPTION_UNIT.match(name):
        flow, block, unit, scope, leaf = match.groups()
        return _leaf_assignment(
            f"backbone/{flow}/block{block}/unit{unit}/{_unit_name(scope)}", leaf, name, array)
    if match := _XCEPTION_STEM.match(name):
        return _leaf_assignment(
            f"backbone/entry_flow/{match.group(1)}", match.group(2), name, array)
    if match := _ASPP.match(name):
        return _leaf_assignment(f"head/aspp/{_unit_name(match.group(1))}", match.group(2), name,
                                array)
    if match := _DECODER.match(name):
        return _leaf_assignment(f"head/decoder/{_unit_name(match.group(1))}", match.group(2), name,
                                array)
    if name == "logits/semantic/weights":
        return Assignment("params/head/logits/kernel", name, array)
    if name == "logits/semantic/biases":
        return Assignment("params/head/logits/bias", name, array)
    return None


def tf_assignments(tensors):
    """(assignments, ignored, unused) for {checkpoint name: array}."""
    assignments, ignored, unused = [], [], []
    for name, array in tensors.items():
        if _BOOKKEEPING.search(name):
            ignored.append((name, "training bookkeeping (step, optimizer slot, moving average)"))
            continue
        if name.startswith("xception_65/logits/"):
            ignored.append((name, "ImageNet classifier of the initialisation checkpoint"))
            continue
        item = tf_name_assignment(name, array)
        if item is None:
            reason = ("TF ResNet scopes are not supported (slim strides in the last unit)"
                      if name.startswith("resnet_v1") else "not a DeepLab-v3+ Xception-65 name")
            unused.append((name, reason))
        else:
            assignments.append(item)
    return assignments, ignored, unused


def load_checkpoint_tensors(path):
    """{variable name: numpy array} of a TF checkpoint (a prefix, or its .index file).

    The V2 format is read in numpy (`tf_bundle`); formats that reader does not handle (V1
    checkpoints, sliced variables) go through TensorFlow's reader when TF is installed.
    """
    path = os.fspath(path)
    if path.endswith(".index"):
        path = path[: -len(".index")]
    try:
        return tf_bundle.read_bundle(path)
    except tf_bundle.BundleFormatError as error:
        bundle_error = error
    try:
        import tensorflow as tf
    except ImportError:
        raise WeightImportError(
            f"{bundle_error} ({TF_HINT} for other checkpoint formats)") from None
    try:
        reader = tf.train.load_checkpoint(path)
        names = sorted(reader.get_variable_to_shape_map())
        return {name: np.asarray(reader.get_tensor(name)) for name in names}
    except Exception as error:  # TF raises DataLossError, NotFoundError, ValueError, ...
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise WeightImportError(
            f"{path}: not a readable TF checkpoint ({bundle_error}; TensorFlow: {message})"
        ) from None


def read_tf(path):
    """(assignments, ignored, unused) of the TF checkpoint at `path`."""
    return tf_assignments(load_checkpoint_tensors(path))
