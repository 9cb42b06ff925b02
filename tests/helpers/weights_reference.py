"""Shared references for the weight-import tests: small PyTorch nets, Caffe layer lists, TF
checkpoints, photographs.

The truths are the reference frameworks fed the same numbers: a PyTorch DeepLab-v2 written here
with kazuto1011's module names (Caffe ResNet layout: stride on the 1x1 reduce conv, ceil-mode stem
pool, atrous res4/res5, summed ASPP classifiers), a PyTorch DeepLab-LargeFOV (VGG-16, Caffe
pooling), and torchvision's own models. Caffe files are written from those same arrays under the
released models' layer names, with BatchNorm statistics multiplied by a random Caffe scale factor;
TF checkpoints are written by TensorFlow itself (in a subprocess) under the TF release's scope
names (`tf_scope_name`).
"""

import numpy as np
import pytest

TORCH_MISSING = "torch is not installed (pip install 'deeplab-jax[torch]'); it is the reference"
CAFFE_MEAN_BGR = np.array([104.008, 116.669, 122.675], np.float32)

# A small DeepLab-v2 with the structure of ResNet-101's: stage 4 has blocks a, b1, b2 (MSRA names).
TINY_V2 = dict(stage_sizes=(1, 1, 3, 1), widths=(8, 16, 32, 64), stem_width=8)
TINY_V2_RATES = (6, 12, 18, 24)


def torch_or_skip():
    return pytest.importorskip("torch", reason=TORCH_MISSING)


def randomize_torch_(module, seed=0):
    """Random weights and BatchNorm statistics (running var in [0.5, 1.5]) in place."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif tensor.ndim == 1:  # BN gamma
                tensor.copy_(1.0 + 0.1 * torch.randn(tensor.shape, generator=generator))
            else:  # conv kernels: He-like scale keeps activations O(1) through the net
                fan_in = int(np.prod(tensor.shape[1:]))
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
    return module.eval()


def torch_deeplab_v2(num_classes, stage_sizes, widths, stem_width, rates):
    """PyTorch DeepLab-v2 at output stride 8 with kazuto1011's names (layer1..5, aspp.c<i>)."""
    import torch
    from torch import nn

    class ConvBnReLU(nn.Sequential):
        def __init__(self, cin, cout, k, stride, rate, relu=True):
            super().__init__()
            self.add_module("conv", nn.Conv2d(cin, cout, k, stride, rate * (k - 1) // 2, rate,
                                              bias=False))
            self.add_module("bn", nn.BatchNorm2d(cout, eps=1e-5))
            if relu:
                self.add_module("relu", nn.ReLU())

    class Bottleneck(nn.Module):
        def __init__(self, cin, cout, stride, rate, projection):
            super().__init__()
            mid = cout // 4
            self.reduce = ConvBnReLU(cin, mid, 1, stride, 1)
            self.conv3x3 = ConvBnReLU(mid, mid, 3, 1, rate)
            self.increase = ConvBnReLU(mid, cout, 1, 1, 1, relu=False)
            self.shortcut = ConvBnReLU(cin, cout, 1, stride, 1, relu=False) if projection else None

        def forward(self, x):
            h = self.increase(self.conv3x3(self.reduce(x)))
            return torch.relu(h + (x if self.shortcut is None else self.shortcut(x)))

    class ASPP(nn.Module):
        def __init__(self, cin):
            super().__init__()
            for i, r in enumerate(rates):
                self.add_module(f"c{i}", nn.Conv2d(cin, num_classes, 3, 1, r, r, bias=True))

        def forward(self, x):
            return sum(branch(x) for branch in self.children())

    net = nn.Sequential()
    stem = nn.Sequential()
    stem.add_module("conv1", ConvBnReLU(3, stem_width, 7, 2, 1))
    stem.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))
    net.add_module("layer1", stem)
    cin = stem_width
    for stage, (size, width, stride, rate) in enumerate(
            zip(stage_sizes, widths, (1, 2, 1, 1), (1, 1, 2, 4))):
        layer = nn.Sequential()
        for j in range(size):
            layer.add_module(f"block{j + 1}", Bottleneck(
                cin if j == 0 else width * 4, width * 4, stride if j == 0 else 1, rate, j == 0))
        net.add_module(f"layer{stage + 2}", layer)
        cin = width * 4
    net.add_module("aspp", ASPP(cin))
    return net


def torch_largefov(num_classes, fc_width):
    """PyTorch DeepLab-LargeFOV (v1) with the Caffe release's layer names as attributes."""
    import torch
    from torch import nn

    class LargeFOV(nn.Module):
        blocks = ((1, 2, 3, 64), (2, 2, 64, 128), (3, 3, 128, 256), (4, 3, 256, 512),
                  (5, 3, 512, 512))

        def __init__(self):
            super().__init__()
            for block, n, cin, cout in self.blocks:
                for i in range(1, n + 1):
                    rate = 2 if block == 5 else 1
                    self.add_module(f"conv{block}_{i}", nn.Conv2d(
                        cin if i == 1 else cout, cout, 3, padding=rate, dilation=rate))
            self.fc6 = nn.Conv2d(512, fc_width, 3, padding=12, dilation=12)
            self.fc7 = nn.Conv2d(fc_width, fc_width, 1)
            self.fc8_voc12 = nn.Conv2d(fc_width, num_classes, 1)

        def forward(self, x):
            for block, n, _, _ in self.blocks:
                for i in range(1, n + 1):
                    x = torch.relu(getattr(self, f"conv{block}_{i}")(x))
                x = nn.functional.max_pool2d(x, 3, 2 if block <= 3 else 1, 1, ceil_mode=True)
            x = nn.functional.avg_pool2d(x, 3, 1, 1, ceil_mode=True, count_include_pad=True)
            x = torch.relu(self.fc6(x))
            x = torch.relu(self.fc7(x))
            return self.fc8_voc12(x)

    return LargeFOV()


def msra_block_names(stage_sizes):
    """{(stage 2..5, block 1..n): MSRA suffix}: stage 4 uses ResNet-101's a, b1, b2, ... form
    (res4a, res4b1, ..., res4b22 in the release), the other stages letters a, b, c, ... (res2c).
    """
    names = {}
    for stage, size in zip(range(2, 6), stage_sizes):
        for j in range(1, size + 1):
            if stage == 4:
                names[(stage, j)] = "a" if j == 1 else f"b{j - 1}"
            else:
                names[(stage, j)] = "abcdefghijklmnopqrstuvwxyz"[j - 1]
    return names


def caffe_layers_from_kazuto(state, stage_sizes, rng, msc=True):
    """Caffe layers (name, type, blobs) of the DeepLab-v2 release, from kazuto-named tensors.

    BatchNorm blobs are (mean * s, var * s, [s]) with a random Caffe scale factor s per layer.
    """
    units = {"reduce": "2a", "conv3x3": "2b", "increase": "2c", "shortcut": "1"}
    names = msra_block_names(stage_sizes)

    def conv_bn(prefix, caffe_conv, caffe_bn, caffe_scale):
        factor = np.float32(rng.uniform(0.5, 2000.0))
        return [
            (caffe_conv, "Convolution", [state[f"{prefix}.conv.weight"]]),
            (caffe_bn, "BatchNorm", [state[f"{prefix}.bn.running_mean"] * factor,
                                     state[f"{prefix}.bn.running_var"] * factor,
                                     np.array([factor], np.float32)]),
            (caffe_scale, "Scale", [state[f"{prefix}.bn.weight"], state[f"{prefix}.bn.bias"]]),
        ]

    layers = conv_bn("layer1.conv1", "conv1", "bn_conv1", "scale_conv1")
    for (stage, block), suffix in names.items():
        for unit, branch in units.items():
            prefix = f"layer{stage}.block{block}.{unit}"
            if f"{prefix}.conv.weight" not in state:
                continue
            tag = f"{stage}{suffix}_branch{branch}"
            layers += conv_bn(prefix, f"res{tag}", f"bn{tag}", f"scale{tag}")
    i = 0
    while f"aspp.c{i}.weight" in state:
        layers.append((f"fc1_voc12_c{i}", "Convolution",
                       [state[f"aspp.c{i}.weight"], state[f"aspp.c{i}.bias"]]))
        i += 1
    if msc:  # the MSC train net's shared-parameter copies
        layers += [(f"{name}{suffix}", kind, blobs) for suffix in ("_res075", "_res05")
                   for name, kind, blobs in list(layers)]
    return layers


def torch_state_numpy(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def caffe_bgr_nchw(images_BxHxWx3):
    """What the Caffe release feeds its net: BGR minus the mean, NCHW."""
    bgr = images_BxHxWx3[..., ::-1].astype(np.float32) - CAFFE_MEAN_BGR.reshape(1, 1, 1, 3)
    return np.ascontiguousarray(bgr.transpose(0, 3, 1, 2))


TF_BN = {"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"}


def tf_scope_name(path):
    """Our variable path -> the release's checkpoint name (independent of the importer)."""
    collection, *parts = path.split("/")
    leaf = parts[-1]
    if parts[:2] == ["head", "logits"]:
        return "logits/semantic/" + {"kernel": "weights", "bias": "biases"}[leaf]
    if parts[0] == "backbone":
        flow, rest = parts[1], parts[2:-2]
        if rest[0].startswith("conv1_"):
            scope = f"xception_65/{flow}/{rest[0]}"
        else:
            block, unit, conv = rest[0], rest[1], rest[2:]
            scope = (f"xception_65/{flow}/{block}/unit_{unit[len('unit'):]}/xception_module/"
                     + "_".join(conv))
    else:  # head/aspp/... or head/decoder/...
        section, conv = parts[1], parts[2:-2]
        scope = ("decoder/" if section == "decoder" else "") + "_".join(conv)
    if parts[-2] == "bn":
        return f"{scope}/BatchNorm/{TF_BN[leaf]}"
    return f"{scope}/{'depthwise_weights' if scope.endswith('_depthwise') else 'weights'}"


# Run in a subprocess: TensorFlow never enters a test process (imported before PyTorch's triton,
# TF crashes the interpreter).
_TF_WRITER = """
import sys
import numpy as np
import tensorflow as tf

tensors = dict(np.load(sys.argv[1]))
prefix = sys.argv[2]
with tf.Graph().as_default():
    variables = {name: tf.compat.v1.Variable(value, name=name.replace("/", "_"))
                 for name, value in tensors.items()}
    saver = tf.compat.v1.train.Saver(var_list=variables)
    with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        saver.save(session, prefix, write_meta_graph=False)
"""


def write_tf_checkpoint(prefix, tensors, then=""):
    """Writes {TF name: array} as a TF V2 checkpoint at `prefix`, with TensorFlow itself; `then`
    is more code run in that process (with np, tf, tensors and prefix defined)."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed (pip install 'deeplab-jax[tf]'); it writes the "
                    "checkpoint")
    arrays = os.fspath(prefix) + ".tensors.npz"
    np.savez(arrays, **tensors)
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", _TF_WRITER + then, arrays, os.fspath(prefix)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    os.remove(arrays)


def photograph(size, name="astronaut"):
    """A scikit-image photograph resized to size x size, uint8 RGB (real colour statistics)."""
    import skimage.data
    from PIL import Image

    image = Image.fromarray(getattr(skimage.data, name)()[..., :3])
    return np.asarray(image.resize((size, size), Image.BILINEAR), np.uint8)


def imagenet_nchw(images_BxHxWx3):
    """What torchvision's ImageNet models take: RGB / 255 normalised by mean and std, NCHW."""
    mean = np.array([0.485, 0.456, 0.406], np.float32) * 255
    std = np.array([0.229, 0.224, 0.225], np.float32) * 255
    x = (images_BxHxWx3.astype(np.float32) - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def backbone_features(model, variables, images_BxHxWx3):
    """The model's backbone output on uint8 RGB images, normalised as the model normalises."""
    from deeplab_jax.models import normalize_images
    from tests.helpers.models import forward

    def features(module, images):
        return module.backbone(normalize_images(images, module.input_norm), train=False)

    return forward(model, variables, images_BxHxWx3, method=features)


def relative_error(ours, reference):
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))
