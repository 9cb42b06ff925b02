"""PyTorch state dicts -> our variables: kazuto1011's DeepLab-v2, torchvision ResNet/DeepLabV3.

Files are read without executing pickled code: `torch.load(..., weights_only=True)` (torch is the
optional extra `deeplab-jax[torch]`), or `.safetensors` through the `safetensors` package. A state
dict nested under 'state_dict' or 'model' is unwrapped; 'module.' prefixes (DataParallel) are
dropped.

kazuto1011 (the DeepLab-v2 Caffe release converted to PyTorch; v2 paper §4.1.2), with the MSC
wrapper's 'base.' prefix dropped (our names follow his, models/backbones/resnet.py):
  layer1.conv1.{conv, bn}                            -> backbone/stem/conv1/{conv, bn}
  layer<N>.block<K>.{reduce,conv3x3,increase,shortcut}.{conv, bn}
                                                     -> backbone/layer<N>/block<K>/.../{conv, bn}
  aspp.c<i>                                          -> head/c<i>
torchvision ResNet (ImageNet backbones, to initialise training; layout v1.5, so build the model
with stride_on_3x3=True, pool_ceil_mode=False, input_norm='imagenet'):
  conv1, bn1                                         -> backbone/stem/conv1/{conv, bn}
  layer<n>.<k>.{conv1,bn1 | conv2,bn2 | conv3,bn3}   -> backbone/layer<n+1>/block<k+1>/
                                                        {reduce | conv3x3 | increase}/{conv, bn}
                                                        (basic blocks: conv1 | conv2)
  layer<n>.<k>.downsample.{0, 1}                     -> .../shortcut/{conv, bn}
  fc (the ImageNet classifier)                       -> ignored
torchvision segmentation models (deeplabv3_resnet50/101) add 'backbone.' to those names; their
'classifier' is the DeepLab-v3 head (`torchvision_v3_head_assignments`; build deeplab_v3_resnet*
with output_stride=8, multi_grid=(), extra_conv3x3=True, which the converter does) and
'aux_classifier' (an FCN head used only as an auxiliary training loss) is ignored.
BatchNorm: weight/bias -> params scale/bias, running_mean/var -> batch_stats mean/var;
num_batches_tracked is ignored. Conv kernels go OIHW -> HWIO.
"""

import dataclasses
import os
import re

import numpy as np

from deeplab_jax.weights.mapping import (
    BN_LEAVES,
    WeightImportError,
    bn_assignment,
    conv_assignment,
)

TORCH_HINT = "reading PyTorch files needs torch: pip install 'deeplab-jax[torch]' (or torch)"
_BN = "|".join(BN_LEAVES)


def _unwrap(obj, path):
    for key in ("state_dict", "model", "model_state", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise WeightImportError(
            f"{path}: expected a PyTorch state dict (a dict of tensors), got {type(obj).__name__}"
        )
    return obj


def _to_numpy(value, name, path):
    if isinstance(value, np.ndarray):
        return value
    try:
        import torch
    except ImportError:  # pragma: no cover - torch.load already needed it
        raise WeightImportError(TORCH_HINT) from None
    if not isinstance(value, torch.Tensor):
        raise WeightImportError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype != torch.float64:
        value = value.float()
    return value.numpy()


def load_state_dict(path):
    """{name: numpy array} from a PyTorch checkpoint (.pt/.pth/.bin) or a .safetensors file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightImportError(f"weight file {path} does not exist")
    if path.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise WeightImportError(
                f"{path}: reading .safetensors needs the safetensors package "
                "(pip install safetensors)") from None
        try:
            state = load_file(path)
        except Exception as error:  # the package raises its own error types
            raise WeightImportError(f"{path}: not a readable safetensors file ({error})") from None
    else:
        try:
            import torch
        except ImportError:
            raise WeightImportError(f"{path}: {TORCH_HINT}") from None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # zip, pickle and safety errors all mean "cannot import"
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise WeightImportError(
                f"{path}: not a readable PyTorch state dict ({message}); files that need "
                "arbitrary pickled code are refused (weights_only=True)"
            ) from None
    state = _unwrap(state, path)
    arrays = {}
    for name, value in state.items():
        name = name[len("module."):] if name.startswith("module.") else name
        arrays[name] = _to_numpy(value, name, path)
    return arrays


def _strip(name, prefix):
    return name[len(prefix):] if name.startswith(prefix) else None


# --------------------------------------------------------------------------------------- kazuto

_KAZUTO_STEM = re.compile(rf"^layer1\.conv1\.(conv|bn)\.(weight|{_BN})$")
_KAZUTO_BLOCK = re.compile(
    rf"^layer([2-5])\.block(\d+)\.(reduce|conv3x3|increase|shortcut)\.(conv|bn)\.(weight|{_BN})$")
_KAZUTO_ASPP = re.compile(r"^aspp\.c(\d+)\.(weight|bias)$")


def _unit_assignment(unit, kind, leaf, source, array):
    if kind == "conv":
        return conv_assignment(unit, leaf, source, array)
    return bn_assignment(unit, leaf, source, array)


def kazuto_assignments(state):
    """(assignments, ignored, unused) for a kazuto1011 DeepLab-v2 state dict."""
    assignments, ignored, unused = [], [], []
    for source, array in state.items():
        name = _strip(source, "base.") or source  # the MSC wrapper holds the net as `base`
        if name.endswith("num_batches_tracked"):
            ignored.append((source, "BatchNorm step counter"))
            continue
        match = _KAZUTO_STEM.match(name)
        if match:
            kind, leaf = match.groups()
            assignments.append(_unit_assignment(
                f"backbone/stem/conv1/{kind}", kind, leaf, source, array))
            continue
        match = _KAZUTO_BLOCK.match(name)
        if match:
            stage, block, unit, kind, leaf = match.groups()
            assignments.append(_unit_assignment(
                f"backbone/layer{stage}/block{block}/{unit}/{kind}", kind, leaf, source, array))
            continue
        match = _KAZUTO_ASPP.match(name)
        if match:
            branch, leaf = match.groups()
            assignments.append(conv_assignment(f"head/c{branch}", leaf, source, array))
            continue
        unused.append((source, "not a kazuto1011 DeepLab-v2 (ResNet + ASPP) name"))
    return assignments, ignored, unused


# ---------------------------------------------------------------------------------- torchvision

_TV_STEM = re.compile(rf"^(conv1|bn1)\.(weight|{_BN})$")
_TV_BLOCK = re.compile(rf"^layer([1-4])\.(\d+)\.(conv|bn)([123])\.(weight|{_BN})$")
_TV_DOWNSAMPLE = re.compile(rf"^layer([1-4])\.(\d+)\.downsample\.([01])\.(weight|{_BN})$")
_BOTTLENECK_UNITS = {"1": "reduce", "2": "conv3x3", "3": "increase"}
_BASIC_UNITS = {"1": "conv1", "2": "conv2"}


def torchvision_resnet_assignments(state, prefix=""):
    """(assignments, ignored, unused) for torchvision ResNet names (after `prefix`)."""
    names = [n[len(prefix):] for n in state if n.startswith(prefix)]
    units = _BOTTLENECK_UNITS if any(".conv3." in n for n in names) else _BASIC_UNITS
    assignments, ignored, unused = [], [], []
    for source, array in state.items():
        name = _strip(source, prefix)
        if name is None:
            continue
        if name.endswith("num_batches_tracked"):
            ignored.append((source, "BatchNorm step counter"))
            continue
        if name.startswith("fc."):
            ignored.append((source, "ImageNet classifier (not part of a segmentation model)"))
            continue
        match = _TV_STEM.match(name)
        if match:
            module, leaf = match.groups()
            kind = "conv" if module == "conv1" else "bn"
            assignments.append(_unit_assignment(
                f"backbone/stem/conv1/{kind}", kind, leaf, source, array))
            continue
        match = _TV_BLOCK.match(name)
        if match and match.group(4) in units:
            layer, block, kind, index, leaf = match.groups()
            unit = f"backbone/layer{int(layer) + 1}/block{int(block) + 1}/{units[index]}/{kind}"
            assignments.append(_unit_assignment(unit, kind, leaf, source, array))
            continue
        match = _TV_DOWNSAMPLE.match(name)
        if match:
            layer, block, index, leaf = match.groups()
            kind = "conv" if index == "0" else "bn"
            unit = f"backbone/layer{int(layer) + 1}/block{int(block) + 1}/shortcut/{kind}"
            assignments.append(_unit_assignment(unit, kind, leaf, source, array))
            continue
        unused.append((source, "not a torchvision ResNet name"))
    return assignments, ignored, unused


def torchvision_assignments(state, head_assignments=None):
    """A torchvision ResNet classifier or segmentation model (names under 'backbone.').

    head_assignments(state) -> (assignments, ignored, unused) maps 'classifier.*'; without it those
    tensors are reported unused.
    """
    if not any(name.startswith("backbone.") for name in state):
        return torchvision_resnet_assignments(state)
    assignments, ignored, unused = torchvision_resnet_assignments(state, prefix="backbone.")
    head = {n: a for n, a in state.items() if n.startswith("classifier.")}
    for source in state:
        if source.startswith("aux_classifier."):
            ignored.append((source, "torchvision auxiliary FCN head (training-time loss only)"))
        elif not source.startswith(("backbone.", "classifier.")):
            unused.append((source, "not a torchvision segmentation-model name"))
    if head:
        if head_assignments is None:
            unused.extend((n, "no DeepLab-v3 head mapping available") for n in head)
        else:
            more = head_assignments(head)
            for total, extra in zip((assignments, ignored, unused), more):
                total.extend(extra)
    return assignments, ignored, unused


# torchvision DeepLabHead = [ASPP, 3x3 conv, BN, ReLU, 1x1 classifier]; ASPP.convs = [1x1, three
# atrous 3x3, pooling (AdaptiveAvgPool, conv, BN, ReLU)], then `project` (1x1 conv, BN, ReLU, drop).
_TV_ASPP_BRANCH = re.compile(rf"^classifier\.0\.convs\.([0-3])\.([01])\.(weight|{_BN})$")
_TV_ASPP_POOL = re.compile(rf"^classifier\.0\.convs\.4\.([12])\.(weight|{_BN})$")
_TV_PROJECT = re.compile(rf"^classifier\.0\.project\.([01])\.(weight|{_BN})$")
_TV_HEAD_CONV = re.compile(rf"^classifier\.([12])\.(weight|{_BN})$")
_TV_LOGITS = re.compile(r"^classifier\.4\.(weight|bias)$")


def _projection_rows_to_ours(num_branches):
    """torchvision concatenates [1x1, atrous..., pooling]; ours [pooling, 1x1, atrous...]."""

    def transform(kernel_OxIx1x1):
        kernel = np.asarray(kernel_OxIx1x1)
        blocks = np.split(kernel, num_branches, axis=1)
        return np.ascontiguousarray(
            np.transpose(np.concatenate(blocks[-1:] + blocks[:-1], axis=1), (2, 3, 1, 0)))

    return transform


def torchvision_v3_head_assignments(head):
    """(assignments, ignored, unused) for torchvision's DeepLabHead -> our DeepLabV3Head with
    extra_conv3x3=True (models/heads/aspp_v3.py): aspp/{aspp0..3, image_pooling,
    concat_projection}, conv3x3, logits."""
    assignments, ignored, unused = [], [], []
    branches = 1 + len({m.group(1) for n in head if (m := _TV_ASPP_BRANCH.match(n))})
    for source, array in head.items():
        if source.endswith("num_batches_tracked"):
            ignored.append((source, "BatchNorm step counter"))
            continue
        if match := _TV_ASPP_BRANCH.match(source):
            branch, index, leaf = match.groups()
            unit, kind = f"head/aspp/aspp{branch}", "conv" if index == "0" else "bn"
        elif match := _TV_ASPP_POOL.match(source):
            index, leaf = match.groups()
            unit, kind = "head/aspp/image_pooling", "conv" if index == "1" else "bn"
        elif match := _TV_PROJECT.match(source):
            index, leaf = match.groups()
            unit, kind = "head/aspp/concat_projection", "conv" if index == "0" else "bn"
            if kind == "conv":
                item = conv_assignment(f"{unit}/conv", leaf, source, array)
                assignments.append(dataclasses.replace(
                    item, transform=_projection_rows_to_ours(branches)))
                continue
        elif match := _TV_HEAD_CONV.match(source):
            index, leaf = match.groups()
            unit, kind = "head/conv3x3", "conv" if index == "1" else "bn"
        elif match := _TV_LOGITS.match(source):
            assignments.append(conv_assignment("head/logits", match.group(1), source, array))
            continue
        else:
            unused.append((source, "not a torchvision DeepLabHead name"))
            continue
        assignments.append(_unit_assignment(f"{unit}/{kind}", kind, leaf, source, array))
    return assignments, ignored, unused
