"""Caffe layer names of the released DeepLab models -> our variables (v1 LargeFOV, v2 ResNet MSC).

DeepLab-v1 (VGG-16; v2 paper §3.1, §4.1.1): conv1_1 .. conv5_3 -> backbone/conv1_1 .. conv5_3;
fc6, fc7 -> head/fc6, head/fc7; the classifier fc8 or fc8_<dataset> (fc8_voc12) -> head/fc8. The VGG
ASPP models (§4.1.2, Fig. 7) name their branches fc6_1..4, fc7_1..4, fc8_<dataset>_1..4
-> head/c0..c3.

DeepLab-v2 (ResNet-101, MSRA layout; §4.1.2), the names kazuto1011's converter also reads:
  conv1, bn_conv1, scale_conv1                     -> backbone/stem/conv1/{conv, bn}
  res<S><B>_branch<1|2a|2b|2c>                     -> backbone/layer<S>/block<b>/
  bn<S><B>_branch.., scale<S><B>_branch..              {shortcut|reduce|conv3x3|increase}/{conv, bn}
  fc1_<dataset>_c<i> (ASPP classifiers)            -> head/c<i>
with block letters a, b, c, ... (block 1, 2, 3, ...) or, in the deep stages of ResNet-101, a, b1,
b2, ... (b<k> is block k + 1). The MSC training net copies every layer for its 0.75 and 0.5 input
branches (suffixes _res075 and _res05) with shared parameters; those copies are checked to equal
the scale-1 layer and then ignored, since our MSC wrapper shares the parameters by construction.

BatchNorm: Caffe's BatchNorm layer stores (sum of means, sum of variances, scale factor s); the
running statistics are blob / s (0 if s == 0), as Caffe's own forward pass computes them. The
separate Scale layer holds gamma and beta (our BN scale and bias). Kernels go OIHW -> HWIO.
The released models take BGR 0..255 minus the mean (104.008, 116.669, 122.675): our
input_norm='caffe_bgr' (the default of the paper models), applied inside the model to RGB input.
"""

import re

import numpy as np

from deeplab_jax.weights.caffe_proto import read_caffemodel
from deeplab_jax.weights.mapping import Assignment, WeightImportError, oihw_to_hwio

MSC_SUFFIXES = ("_res075", "_res05")
CAFFE_BN_EPSILON = 1e-5
_BRANCHES = {"1": "shortcut", "2a": "reduce", "2b": "conv3x3", "2c": "increase"}
_RES_NAME = re.compile(r"^(res|bn|scale)(\d)([a-z])(\d*)_branch(1|2a|2b|2c)$")
_VGG_CONV = re.compile(r"^conv(\d)_(\d)$")
_VGG_FC = re.compile(r"^fc([678])(?:_[A-Za-z][A-Za-z0-9]*)?(?:_(\d+))?$")
_ASPP_V2 = re.compile(r"^fc1(?:_[A-Za-z0-9]+)*?(?:_c(\d+))?$")
# ImageNet classifiers of the initialisation models: never part of a segmentation model.
_IMAGENET_CLASSIFIERS = {"fc1000"}


def _block_index(letter, digits):
    """res4b22 -> 23, res2c -> 3, res4a -> 1 (MSRA naming)."""
    if digits:
        if letter != "b":
            raise ValueError(letter + digits)
        return int(digits) + 1
    return ord(letter) - ord("a") + 1


def _vector(blob):
    """A per-channel blob (C,), also from the legacy (1, 1, 1, C) form."""
    array = np.asarray(blob)
    if sum(d != 1 for d in array.shape) > 1:
        raise WeightImportError(f"expected a vector blob, got shape {array.shape}")
    return array.reshape(-1)


def _kernel(blob):
    array = np.asarray(blob)
    if array.ndim == 2:  # an InnerProduct used as a 1x1 convolution
        array = array[:, :, None, None]
    return oihw_to_hwio(array)


def _conv_unit_assignments(unit, layer):
    """Our Conv at `unit` <- a Convolution layer's [weight(, bias)] blobs.

    A bias in the file where our conv has none (or the reverse) is reported by the validation.
    """
    items = [Assignment(f"params/{unit}/kernel", f"{layer.name}[0]", layer.blobs[0], _kernel)]
    if len(layer.blobs) > 1:
        items.append(Assignment(f"params/{unit}/bias", f"{layer.name}[1]", layer.blobs[1], _vector))
    return items


def _batch_norm_assignments(unit, layer):
    if len(layer.blobs) != 3:
        raise WeightImportError(
            f"BatchNorm layer {layer.name!r} has {len(layer.blobs)} blobs; Caffe's BatchNorm has 3 "
            "(mean, variance, scale factor)"
        )
    factor = float(np.asarray(layer.blobs[2]).reshape(-1)[0])
    inverse = 0.0 if factor == 0 else 1.0 / factor  # Caffe's rule for a zero factor
    mean = _vector(layer.blobs[0]) * np.float32(inverse)
    var = _vector(layer.blobs[1]) * np.float32(inverse)
    return [
        Assignment(f"batch_stats/{unit}/mean", f"{layer.name}[0]/{factor:g}", mean),
        Assignment(f"batch_stats/{unit}/var", f"{layer.name}[1]/{factor:g}", var),
    ]


def _scale_assignments(unit, layer):
    if len(layer.blobs) != 2:
        raise WeightImportError(
            f"Scale layer {layer.name!r} has {len(layer.blobs)} blobs; expected gamma and beta "
            "(bias_term: true)"
        )
    return [
        Assignment(f"params/{unit}/scale", f"{layer.name}[0]", layer.blobs[0], _vector),
        Assignment(f"params/{unit}/bias", f"{layer.name}[1]", layer.blobs[1], _vector),
    ]


def _resnet_unit(name):
    """'res4b3_branch2b' -> ('backbone/layer4/block4/conv3x3', 'res'), or None."""
    if name in ("conv1", "bn_conv1", "scale_conv1"):
        return "backbone/stem/conv1", name.split("_")[0] if name != "conv1" else "res"
    match = _RES_NAME.match(name)
    if not match:
        return None
    kind, stage, letter, digits, branch = match.groups()
    try:
        block = _block_index(letter, digits)
    except ValueError:
        return None
    return f"backbone/layer{stage}/block{block}/{_BRANCHES[branch]}", kind


def layer_assignments(layer):
    """Assignments for one Caffe layer with blobs, or None when its name is not a known one."""
    resnet = _resnet_unit(layer.name)
    if resnet is not None:
        unit, kind = resnet
        if kind == "res":
            return _conv_unit_assignments(f"{unit}/conv", layer)
        if kind == "bn":
            return _batch_norm_assignments(f"{unit}/bn", layer)
        return _scale_assignments(f"{unit}/bn", layer)
    match = _VGG_CONV.match(layer.name)
    if match:
        return _conv_unit_assignments(f"backbone/{layer.name}", layer)
    match = _VGG_FC.match(layer.name)
    if match:
        fc, branch = match.groups()
        unit = f"head/fc{fc}" if branch is None else f"head/c{int(branch) - 1}/fc{fc}"
        return _conv_unit_assignments(unit, layer)
    match = _ASPP_V2.match(layer.name)
    if match:
        branch = match.group(1) or "0"
        return _conv_unit_assignments(f"head/c{int(branch)}", layer)
    return None


def caffe_assignments(layers, source):
    """(assignments, ignored, unused, bn_epsilons) for the layers of one .caffemodel."""
    with_blobs = [layer for layer in layers if layer.blobs]
    by_name = {}
    for layer in with_blobs:
        if layer.name in by_name:
            raise WeightImportError(f"{source}: two layers named {layer.name!r} carry weights")
        by_name[layer.name] = layer
    assignments, ignored, unused, epsilons = [], [], [], set()
    for layer in with_blobs:
        base_name = _msc_base(layer.name)
        if base_name is not None:
            base = by_name.get(base_name)
            if base is not None and _same_blobs(base, layer):
                ignored.append((layer.name, f"MSC branch copy of {base_name} (shared weights)"))
            else:
                unused.append((layer.name, f"MSC branch copy that differs from {base_name!r}"))
            continue
        if layer.name in _IMAGENET_CLASSIFIERS:
            ignored.append((layer.name, "ImageNet classifier of the initialisation model"))
            continue
        items = layer_assignments(layer)
        if items is None:
            unused.append(
                (layer.name, f"no mapping for a {layer.type or 'Caffe'} layer of that name"))
            continue
        if layer.bn_eps is not None:
            epsilons.add(round(layer.bn_eps, 12))
        assignments.extend(items)
    return assignments, ignored, unused, epsilons


def _msc_base(name):
    for suffix in MSC_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _same_blobs(a, b):
    return len(a.blobs) == len(b.blobs) and all(
        np.shape(x) == np.shape(y) and np.array_equal(x, y) for x, y in zip(a.blobs, b.blobs)
    )


def read_caffe(path):
    """(assignments, ignored, unused, bn_epsilons) of the .caffemodel at `path`."""
    return caffe_assignments(read_caffemodel(path), source=str(path))
