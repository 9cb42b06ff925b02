"""DeepLab-v3/v3+ models: registry, output strides, OS 16 <-> OS 8 with the same weights, parameter
counts against torchvision and the TF Xception-65 definition, MSC, dtype, errors.

Heavy models are only traced (`jax.eval_shape`); numerical checks use tiny widths.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import models
from deeplab_jax.models.backbones.vgg import VGG16
from deeplab_jax.models.deeplab import DeepLab
from deeplab_jax.models.heads.decoder import DeepLabV3PlusHead
from tests.helpers.models import (
    XCEPTION65_TF_COUNT,
    abstract_init,
    count_params,
    random_variables,
)

V3_NAMES = ("deeplab_v3_resnet50", "deeplab_v3_resnet101", "deeplab_v3plus_resnet50",
            "deeplab_v3plus_resnet101", "deeplab_v3plus_xception65", "deeplab_v3_demo",
            "deeplab_v3plus_demo")
TINY_RESNET = dict(stage_sizes=(1, 1, 1, 3), widths=(4, 4, 8, 8), aspp_features=8,
                   decoder_features=8, decoder_low_level_features=4)


def shapes(tree):
    return jax.tree.map(lambda leaf: leaf.shape, tree)


def test_v3_names_are_registered():
    assert set(V3_NAMES) <= set(models.MODELS)
    for name in V3_NAMES:
        model = models.get_model(name, 21)
        assert isinstance(model, models.DeepLab) and model.point_head is None
        assert {"decoder", "pointrend", "aspp_rates", "output_stride"} <= set(
            models.accepted_overrides(name))
    demo = models.get_model("deeplab_v3plus_demo", 8)
    assert demo.backbone.spec.widths == (16, 32, 64, 128) and demo.backbone.spec.block == "basic"
    assert demo.input_norm == "imagenet" and not demo.backbone.norm.frozen
    paper = models.get_model("deeplab_v3plus_resnet101", 21)
    assert paper.backbone.output_stride == 16 and paper.backbone.spec.multi_grid == (1, 2, 4)
    assert not paper.backbone.norm.frozen  # v3 trains BatchNorm (§4.1)
    assert models.get_model("deeplab_v3plus_xception65", 21).input_norm == "inception"


@pytest.mark.parametrize("name", V3_NAMES)
def test_output_stride_16_and_8_share_the_parameter_tree(name):
    """Training at OS 16 and evaluating at OS 8 needs no change of weights; the ASPP rates double
    and the logits get denser (v3 at the output stride, v3+ always at stride 4)."""
    os16 = models.get_model(name, 21)
    os8 = models.get_model(name, 21, output_stride=8)
    variables16, logits16 = abstract_init(os16, (2, 65, 65, 3))
    variables8, logits8 = abstract_init(os8, (2, 65, 65, 3))
    assert shapes(variables16) == shapes(variables8)
    rates16 = os16.head.aspp.rates
    assert tuple(os8.head.aspp.rates) == tuple(2 * r for r in rates16)
    if "v3plus" in name:
        assert logits16.shape == logits8.shape == (2, 17, 17, 21)  # stride 4
    else:
        assert logits16.shape == (2, 5, 5, 21) and logits8.shape == (2, 9, 9, 21)
    assert logits16.dtype == jnp.float32 and set(variables16) == {"params", "batch_stats"}
    # The OS 8 model runs with the OS 16 variables as they are.
    out = jax.eval_shape(os8.apply, variables16, jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.uint8))
    assert out.shape[1:3] == logits8.shape[1:3]


def test_v3_at_output_stride_8_is_the_atrous_resampling_of_output_stride_16():
    """Same weights, no image pooling (a global mean is not a subsampling-invariant operation):
    the OS 8 logits subsampled by 2 are the OS 16 logits, because the ASPP rates double."""
    build = functools.partial(models.get_model, "deeplab_v3_resnet50", 4, image_pooling=False,
                              **{k: v for k, v in TINY_RESNET.items() if "decoder" not in k})
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(1, 65, 65, 3)), jnp.uint8)
    variables = random_variables(build(), x)
    logits = {os: jax.jit(build(output_stride=os).apply)(variables, x) for os in (8, 16)}
    np.testing.assert_allclose(np.asarray(logits[8][:, ::2, ::2]), np.asarray(logits[16]),
                               rtol=1e-4, atol=1e-4)
    # Teeth: OS 8 with the OS 16 rates (not doubled) is not the resampling.
    same_rates = build(output_stride=8, aspp_rates=(3, 6, 9))
    wrong = jax.jit(same_rates.apply)(variables, x)
    assert not np.allclose(np.asarray(wrong[:, ::2, ::2]), np.asarray(logits[16]), atol=1e-3)


def _v3_head_count(in_channels, num_classes, features=256, separable=False, extra=False):
    """Hand count of the v3 head: ConvBN = kernel + 2 per channel; separable = depthwise 3x3 + BN
    and pointwise + BN; classifier with bias."""
    def conv_bn(k, cin, cout):
        return k * k * cin * cout + 2 * cout

    def sep(cin, cout):
        return 9 * cin + 2 * cin + cin * cout + 2 * cout

    atrous = 3 * (sep(in_channels, features) if separable else conv_bn(3, in_channels, features))
    total = 2 * conv_bn(1, in_channels, features) + atrous + conv_bn(1, 5 * features, features)
    if extra:
        total += conv_bn(3, features, features)
    return total + features * num_classes + num_classes


def test_v3_resnet101_count_in_torchvision_configuration():
    """torchvision's deeplabv3_resnet101(weights=None, weights_backbone=None, aux_loss=False):
    ResNet-101 (stride on the 3x3), ASPP 256 ch r=12,24,36 with image pooling, a 3x3 conv, the
    classifier: 58,630,997 parameters (counted with torchvision 0.29). Ours in that configuration
    (OS 8 with our OS-16 rates 6,12,18, extra_conv3x3) has the same count."""
    model = models.get_model("deeplab_v3_resnet101", 21, output_stride=8, multi_grid=(),
                             extra_conv3x3=True)
    assert model.head.aspp.rates == (12, 24, 36)
    variables, _ = abstract_init(model, (1, 65, 65, 3))
    assert count_params(variables["params"]) == 58_630_997
    assert count_params(variables["params"]["head"]) == _v3_head_count(2048, 21, extra=True)
    assert count_params(variables["params"]["backbone"]) == 44_549_160 - 2_049_000  # no fc
    # The paper's v3 head has no extra 3x3 conv (TF release): 9 * 256 * 256 + 512 fewer.
    paper, _ = abstract_init(models.get_model("deeplab_v3_resnet101", 21), (1, 65, 65, 3))
    assert count_params(paper["params"]) == 58_630_997 - (9 * 256 * 256 + 2 * 256)


@pytest.mark.parametrize("depth", [101, 50])
def test_v3_resnet_counts_and_shapes_equal_torchvision(depth):
    segmentation = pytest.importorskip(
        "torchvision.models.segmentation",
        reason="torchvision is not installed; it is the reference for the v3 parameter count")
    builder = getattr(segmentation, f"deeplabv3_resnet{depth}")
    theirs = builder(weights=None, weights_backbone=None, aux_loss=False, num_classes=21)
    model = models.get_model(f"deeplab_v3_resnet{depth}", 21, output_stride=8, multi_grid=(),
                             extra_conv3x3=True)
    variables, _ = abstract_init(model, (1, 65, 65, 3))
    assert count_params(variables["params"]) == sum(p.numel() for p in theirs.parameters())
    running = sum(b.numel() for n, b in theirs.named_buffers() if "running" in n)
    assert count_params(variables["batch_stats"]) == running
    # Tensor by tensor (as multisets of shapes; conv kernels HWIO -> OIHW).
    ours = sorted(tuple(leaf.shape[::-1][:2] + leaf.shape[:2]) if leaf.ndim == 4 else leaf.shape
                  for leaf in jax.tree.leaves(variables["params"]))
    assert ours == sorted(tuple(p.shape) for p in theirs.parameters())


def test_v3plus_xception65_count_from_the_tf_definition():
    """TF models/research/deeplab xception_65 backbone (37,867,312, see test_v3_backbones) plus the
    v3+ head of the release: separable ASPP (256 ch, r=6,12,18, image pooling), decoder
    (48-channel projection of the stride-4 features, two separable 3x3 256-ch convs), classifier."""
    variables, logits = abstract_init(models.get_model("deeplab_v3plus_xception65", 21),
                                      (1, 65, 65, 3))
    params = variables["params"]
    assert count_params(params["backbone"]) == XCEPTION65_TF_COUNT
    aspp = _v3_head_count(2048, 0, separable=True)  # without classifier (0 classes)
    decoder = (256 * 48 + 2 * 48) + (9 * 304 + 2 * 304 + 304 * 256 + 2 * 256) + (
        9 * 256 + 2 * 256 + 256 * 256 + 2 * 256)
    classifier = 256 * 21 + 21
    assert count_params(params["head"]) == aspp + decoder + classifier
    assert count_params(params) == 41_055_413
    assert logits.shape == (1, 17, 17, 21)


def test_decoder_uses_the_stride_4_endpoint():
    model = models.get_model("deeplab_v3plus_resnet101", 21)
    variables, _ = abstract_init(model, (1, 65, 65, 3))
    decoder = variables["params"]["head"]["decoder"]
    assert decoder["feature_projection0"]["conv"]["kernel"].shape == (1, 1, 256, 48)  # layer2
    assert decoder["decoder_conv0"]["conv"]["kernel"].shape == (3, 3, 256 + 48, 256)
    xc = models.get_model("deeplab_v3plus_xception65", 21)
    variables, _ = abstract_init(xc, (1, 65, 65, 3))
    projection = variables["params"]["head"]["decoder"]["feature_projection0"]
    assert projection["conv"]["kernel"].shape == (1, 1, 256, 48)


def test_v3plus_tiny_numbers_equal_its_parts():
    """The composition: normalise, backbone endpoints, ASPP + decoder + classifier."""
    model = models.get_model("deeplab_v3plus_resnet50", 3, **TINY_RESNET)
    x = jnp.asarray(np.random.default_rng(1).integers(0, 256, size=(2, 33, 33, 3)), jnp.uint8)
    variables = random_variables(model, x)
    got = jax.jit(model.apply)(variables, x)

    def by_parts(v, images):
        part = {k: {"params": v["params"][k], "batch_stats": v["batch_stats"][k]}
                for k in ("backbone", "head")}
        features, endpoints = model.backbone.apply(
            part["backbone"], models.normalize_images(images, "imagenet"), return_endpoints=True)
        return model.head.apply(part["head"], features, endpoints["layer2"])

    want = jax.jit(by_parts)(variables, x)
    assert got.shape == (2, 9, 9, 3)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_msc_and_bfloat16_with_v3plus():
    model = models.get_model("deeplab_v3plus_demo", 5, msc_scales=(1.0, 0.5), dtype=jnp.bfloat16)
    variables, _ = abstract_init(model, (1, 65, 65, 3))
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    fused, branches = jax.eval_shape(functools.partial(model.apply, return_branches=True),
                                     variables, jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.uint8))
    assert fused.shape == (1, 17, 17, 5) and fused.dtype == jnp.float32
    assert [b.shape[1] for b in branches] == [17, 9]  # 65 and 33 px inputs


def test_v3_configuration_errors():
    with pytest.raises(ValueError, match="aspp_rates"):
        models.get_model("deeplab_v3_resnet101", 21, aspp_rates=(6, 0, 18))
    with pytest.raises(ValueError, match="output_stride=32"):
        models.get_model("deeplab_v3_demo", 21, output_stride=32)  # rates 1, 2, 3 at OS 16
    with pytest.raises(ValueError, match="extra_conv3x3"):
        models.get_model("deeplab_v3plus_resnet101", 21, extra_conv3x3=True)
    with pytest.raises(ValueError, match="multi_grid"):
        abstract_init(models.get_model("deeplab_v3_resnet50", 21, multi_grid=(1, 2)),
                      (1, 33, 33, 3))
    with pytest.raises(ValueError, match="multi_grid"):
        abstract_init(models.get_model("deeplab_v3plus_xception65", 21, multi_grid=(1, 2)),
                      (1, 33, 33, 3))
    no_endpoint = DeepLab(VGG16(), DeepLabV3PlusHead(3))
    with pytest.raises(ValueError, match="stride-4 endpoint"):
        abstract_init(no_endpoint, (1, 33, 33, 3))
