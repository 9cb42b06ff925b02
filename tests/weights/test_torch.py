"""PyTorch import: kazuto1011's DeepLab-v2 layout and torchvision ResNets, against PyTorch itself.

Truth: the PyTorch module (built here with kazuto's names, or torchvision's own) with random
weights and random BatchNorm statistics, run on the same image; every imported tensor is also
compared with the state dict.
"""

import numpy as np
import pytest

from deeplab_jax import models
from deeplab_jax.weights import WeightImportError, import_weights
from deeplab_jax.weights.mapping import flatten

from tests.helpers.models import forward
from tests.helpers.photos import photo
from tests.helpers.weights_reference import (
    TINY_V2,
    TINY_V2_RATES,
    caffe_bgr_nchw,
    randomize_torch_,
    relative_error,
    torch_deeplab_v2,
    torch_or_skip,
    torch_state_numpy,
)

V2_MODEL = "deeplab_v2_resnet101_aspp_l"
IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
IMAGENET_STD = np.array([58.395, 57.12, 57.375], np.float32)


def _imagenet_nchw(images):
    return np.ascontiguousarray(((images - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2))


def test_kazuto_msc_state_dict_matches_reference(tmp_path):
    torch = torch_or_skip()
    net = randomize_torch_(torch_deeplab_v2(5, rates=TINY_V2_RATES, **TINY_V2), seed=3)
    # kazuto's MSC wrapper keeps the net as `base`; his files carry num_batches_tracked too.
    state = {f"base.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "deeplabv2_resnet101_msc-vocaug-20000.pth"
    torch.save(state, path)

    variables, report = import_weights("kazuto", path, V2_MODEL, 5, **TINY_V2)
    flat = flatten(variables)
    reference = torch_state_numpy(net)
    for ours_path, source in report.assigned.items():
        array = reference[source[len("base."):]]
        expected = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array
        np.testing.assert_array_equal(flat[ours_path], expected, err_msg=ours_path)
    assert len(report.assigned) == len(flat) and not report.unused and not report.missing
    assert all("num_batches_tracked" in name for name, _ in report.ignored)

    images = np.random.default_rng(0).uniform(0, 255, (2, 57, 57, 3)).astype(np.float32)
    ours = forward(models.get_model(V2_MODEL, 5, **TINY_V2), variables, images)
    with torch.no_grad():
        expected = net(torch.from_numpy(caffe_bgr_nchw(images))).numpy().transpose(0, 2, 3, 1)
    assert ours.shape == expected.shape == (2, 8, 8, 5)
    assert relative_error(ours, expected) <= 1e-5


def _torchvision_backbone_check(tmp_path, block, stage_sizes, output_stride, **overrides):
    """torchvision's own ResNet class (fewer blocks than ResNet-50/18 to keep compiles short)."""
    torch = torch_or_skip()
    resnet = pytest.importorskip("torchvision.models.resnet", reason="torchvision is the reference")
    dilation = {8: [False, True, True], 32: [False, False, False]}[output_stride]
    block_cls = {"bottleneck": resnet.Bottleneck, "basic": resnet.BasicBlock}[block]
    net = resnet.ResNet(block_cls, list(stage_sizes), replace_stride_with_dilation=dilation)
    model_name = "deeplab_v2_resnet50_aspp_l"
    overrides = dict(stage_sizes=stage_sizes, block=block, **overrides)
    randomize_torch_(net, seed=5)
    path = tmp_path / f"resnet_{block}.pth"
    torch.save(net.state_dict(), path)

    variables, report = import_weights(
        "torchvision", path, model_name, 3, allow_missing="head", output_stride=output_stride,
        **overrides)
    assert {name for name, _ in report.ignored if "ImageNet" in _} == {"fc.weight", "fc.bias"}
    assert all(path.startswith("params/head/") for path in report.missing)

    # The converter applied the torchvision layout (stride on 3x3, floor pooling, ImageNet input).
    model = models.get_model(model_name, 3, output_stride=output_stride, stride_on_3x3=True,
                             pool_ceil_mode=False, input_norm="imagenet", **overrides)
    images = np.random.default_rng(1).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    x_nchw = _imagenet_nchw(images)
    features = forward(
        model.backbone,
        {"params": variables["params"]["backbone"],
         "batch_stats": variables["batch_stats"]["backbone"]},
        np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)), train=False)
    trunk = torch.nn.Sequential(*[getattr(net, n) for n in (
        "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")])
    with torch.no_grad():
        expected = trunk(torch.from_numpy(x_nchw)).numpy().transpose(0, 2, 3, 1)
    assert features.shape == expected.shape
    assert relative_error(features, expected) <= 1e-5


def test_torchvision_bottleneck_resnet_backbone_at_output_stride_8(tmp_path):
    _torchvision_backbone_check(tmp_path, "bottleneck", (1, 1, 2, 1), 8)


def test_torchvision_basic_block_resnet(tmp_path):
    # Basic blocks cannot dilate in torchvision, so the comparison runs at output stride 32.
    _torchvision_backbone_check(tmp_path, "basic", (2, 1, 1, 1), 32)


def test_wrong_model_for_the_file_lists_the_mismatches(tmp_path):
    torch = torch_or_skip()
    net = torch_deeplab_v2(5, rates=TINY_V2_RATES, **TINY_V2)
    path = tmp_path / "tiny.pth"
    torch.save(net.state_dict(), path)
    with pytest.raises(WeightImportError) as error:
        import_weights("kazuto", path, V2_MODEL, 5)  # full ResNet-101 widths and depth
    message = str(error.value)
    assert "layer1.conv1.conv.weight -> params/backbone/stem/conv1/conv/kernel: shape" in message
    assert "variables missing from the file" in message and "more" in message  # clipped list


@pytest.mark.parametrize("content", [b"", b"not a zip or pickle at all", "truncated"])
def test_unreadable_files_give_a_clean_error(tmp_path, content):
    torch = torch_or_skip()
    path = tmp_path / "broken.pth"
    if content == "truncated":
        torch.save({"w": torch.zeros(1000)}, path)
        content = path.read_bytes()[:300]
    path.write_bytes(content)
    with pytest.raises(WeightImportError, match=str(path)):
        import_weights("kazuto", path, V2_MODEL, 5, **TINY_V2)


class PickledObject:
    """Any class: unpickling it would run code that the file names, which weights_only refuses."""


def test_pickled_code_is_refused(tmp_path):
    torch = torch_or_skip()
    path = tmp_path / "evil.pth"
    torch.save({"layer1.conv1.conv.weight": PickledObject()}, path)
    with pytest.raises(WeightImportError, match="weights_only"):
        import_weights("kazuto", path, V2_MODEL, 5, **TINY_V2)


def _torchvision_deeplabv3_check(tmp_path, net, model_name, **overrides):
    torch = torch_or_skip()
    randomize_torch_(net, seed=7)
    path = tmp_path / "deeplabv3.pth"
    torch.save(net.state_dict(), path)
    variables, report = import_weights("torchvision", path, model_name, 21, **overrides)
    assert not report.missing and not report.unused
    # The converter built torchvision's layout; the report says so (for deeplab_model.json).
    assert report.model_overrides["output_stride"] == 8
    assert report.model_overrides["extra_conv3x3"] is True
    model = models.get_model(model_name, 21, **report.model_overrides)
    images = np.random.default_rng(2).uniform(0, 255, (2, 65, 65, 3)).astype(np.float32)
    ours = forward(model, variables, images, train=False)
    with torch.no_grad():  # logits before torchvision's final upsampling
        x = torch.from_numpy(_imagenet_nchw(images))
        expected = net.classifier(net.backbone(x)["out"]).numpy().transpose(0, 2, 3, 1)
    assert ours.shape == expected.shape == (2, 9, 9, 21)
    assert relative_error(ours, expected) <= 1e-5


def test_torchvision_deeplabv3_head_and_small_backbone(tmp_path):
    """torchvision's DeepLabV3 and DeepLabHead classes around a 5-block ResNet (fast)."""
    torch_or_skip()
    segmentation = pytest.importorskip("torchvision.models.segmentation.deeplabv3")
    resnet = pytest.importorskip("torchvision.models.resnet")
    from torchvision.models._utils import IntermediateLayerGetter

    trunk = resnet.ResNet(resnet.Bottleneck, [1, 1, 2, 1],
                          replace_stride_with_dilation=[False, True, True])
    net = segmentation.DeepLabV3(IntermediateLayerGetter(trunk, {"layer4": "out"}),
                                 segmentation.DeepLabHead(2048, 21))
    _torchvision_deeplabv3_check(tmp_path, net, "deeplab_v3_resnet50", stage_sizes=(1, 1, 2, 1))


@pytest.mark.slow
def test_torchvision_deeplabv3_resnet101(tmp_path):
    """torchvision deeplabv3_resnet101 at full size, random weights and BatchNorm statistics."""
    torch_or_skip()
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.segmentation.deeplabv3_resnet101(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    _torchvision_deeplabv3_check(tmp_path, net, "deeplab_v3_resnet101")


def test_safetensors_file_is_read_like_a_state_dict(tmp_path):
    torch_or_skip()
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors is optional")
    net = randomize_torch_(torch_deeplab_v2(5, rates=TINY_V2_RATES, **TINY_V2), seed=4)
    path = tmp_path / "deeplabv2.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    variables, report = import_weights("kazuto", path, V2_MODEL, 5, **TINY_V2)
    np.testing.assert_array_equal(
        variables["params"]["head"]["c2"]["kernel"],
        net.state_dict()["aspp.c2.weight"].numpy().transpose(2, 3, 1, 0))
    assert not report.unused and not report.missing
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightImportError, match="safetensors"):
        import_weights("kazuto", path, V2_MODEL, 5, **TINY_V2)


def _kazuto_msc(torch, base, pyramids=(0.5, 0.75)):
    """kazuto1011's MSC wrapper, behaviour for behaviour: the base at scale 1, the input shrunk
    to int(size * p) with F.interpolate(bilinear, align_corners=False) for every p, each branch's
    logits brought to the scale-1 logits' size the same way, pixel-wise max."""
    import torch.nn.functional as F

    class MSC(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base = base

        def forward(self, x):
            logits = self.base(x)
            fused = [logits]
            for p in pyramids:
                size = [int(s * p) for s in x.shape[2:]]
                shrunk = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                fused.append(F.interpolate(self.base(shrunk), size=logits.shape[2:],
                                           mode="bilinear", align_corners=False))
            return torch.max(torch.stack(fused), dim=0)[0]

    return MSC().eval()


def test_kazuto_msc_forward_is_reproduced(tmp_path):
    """The kazuto layout selects PyTorch's MSC resizing: his multi-scale output, not Caffe's."""
    torch = torch_or_skip()
    net = randomize_torch_(torch_deeplab_v2(5, rates=TINY_V2_RATES, **TINY_V2), seed=4)
    msc = _kazuto_msc(torch, net)
    path = tmp_path / "deeplabv2_resnet101_msc-vocaug-20000.pth"
    torch.save(msc.state_dict(), path)
    variables, report = import_weights("kazuto", path, V2_MODEL, 5, msc_scales=(1.0, 0.75, 0.5),
                                       **TINY_V2)
    assert report.model_overrides["resize_convention"] == "pytorch"
    image = photo("astronaut", 97, 113).astype(np.float32)[None]
    ours = forward(models.get_model(V2_MODEL, 5, **report.model_overrides), variables, image)
    with torch.no_grad():
        expected = msc(torch.from_numpy(caffe_bgr_nchw(image))).numpy().transpose(0, 2, 3, 1)
    assert np.asarray(ours).shape == expected.shape
    assert relative_error(np.asarray(ours), expected) <= 1e-5
    assert np.mean(np.asarray(ours).argmax(-1) == expected.argmax(-1)) >= 0.999
    # The Caffe convention computes another function on the same weights (what imports did
    # before): the setting is what makes the outputs equal.
    caffe = dict(report.model_overrides, resize_convention="caffe")
    other = forward(models.get_model(V2_MODEL, 5, **caffe), variables, image)
    assert relative_error(np.asarray(other), expected) > 1e-3
