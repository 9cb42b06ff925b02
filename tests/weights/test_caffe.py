"""Caffe import: .caffemodel files written from known arrays, read back, mapped and run.

Truths: the known arrays themselves (every imported tensor), and PyTorch running the same net on
the same numbers (the model output); the wire format is cross-checked against protobuf itself.
"""

import numpy as np
import pytest

from deeplab_jax import models
from deeplab_jax.weights import WeightImportError, caffe_proto, import_weights, importer
from deeplab_jax.weights.mapping import flatten

from tests.helpers.models import forward
from tests.helpers.weights_reference import (
    TINY_V2,
    TINY_V2_RATES,
    caffe_bgr_nchw,
    caffe_layers_from_kazuto,
    randomize_torch_,
    relative_error,
    torch_deeplab_v2,
    torch_largefov,
    torch_or_skip,
    torch_state_numpy,
)

V2_MODEL = "deeplab_v2_resnet101_aspp_l"


@pytest.fixture(scope="module")
def tiny_v2():
    """(torch reference net, its numpy state) of the tiny DeepLab-v2."""
    torch_or_skip()
    net = randomize_torch_(torch_deeplab_v2(5, rates=TINY_V2_RATES, **TINY_V2), seed=1)
    return net, torch_state_numpy(net)


def _run_ours(model, variables, images):
    return forward(model, variables, images, train=False)


def _run_torch(net, images):
    import torch

    with torch.no_grad():
        out = net(torch.from_numpy(caffe_bgr_nchw(images)))
    return out.numpy().transpose(0, 2, 3, 1)


def test_resnet_v2_msc_caffemodel_matches_reference(tiny_v2, tmp_path):
    net, state = tiny_v2
    rng = np.random.default_rng(0)
    layers = caffe_layers_from_kazuto(state, TINY_V2["stage_sizes"], rng)
    path = tmp_path / "train2_iter_20000.caffemodel"
    caffe_proto.write_caffemodel(path, layers)

    variables, report = import_weights("caffe", path, V2_MODEL, 5, **TINY_V2)

    # Every tensor: BN statistics divided back by their Caffe scale factor, kernels HWIO.
    flat = flatten(variables)
    stem = "backbone/stem/conv1"
    np.testing.assert_array_equal(
        flat[f"params/{stem}/conv/kernel"],
        state["layer1.conv1.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_allclose(
        flat[f"batch_stats/{stem}/bn/var"], state["layer1.conv1.bn.running_var"], rtol=1e-6)
    np.testing.assert_array_equal(
        flat["params/backbone/layer4/block3/conv3x3/bn/scale"],  # Caffe res4b2 = our block3
        state["layer4.block3.conv3x3.bn.weight"])
    np.testing.assert_array_equal(
        flat["params/head/c3/kernel"], state["aspp.c3.weight"].transpose(2, 3, 1, 0))
    assert len(report.assigned) == len(flat)
    assert not report.missing and not report.unused
    msc_copies = [name for name, why in report.ignored if "MSC" in why]
    assert len(msc_copies) == 2 * sum(1 for layer in layers if "_res0" not in layer[0])

    model = models.get_model(V2_MODEL, 5, **TINY_V2)
    images = rng.uniform(0, 255, (2, 65, 65, 3)).astype(np.float32)
    ours = _run_ours(model, variables, images)
    reference = _run_torch(net, images)
    assert ours.shape == reference.shape == (2, 9, 9, 5)
    assert relative_error(ours, reference) <= 1e-5


def test_largefov_v1_legacy_caffemodel_matches_reference(tmp_path):
    torch_or_skip()
    net = randomize_torch_(torch_largefov(4, fc_width=32), seed=2)
    state = torch_state_numpy(net)
    layers = []
    for name in dict.fromkeys(k.rsplit(".", 1)[0] for k in state):
        layers.append((name, "Convolution", [state[f"{name}.weight"], state[f"{name}.bias"]]))
        layers.append((name.replace("conv", "relu").replace("fc", "relu"), "ReLU", []))
    path = tmp_path / "train_iter_6000.caffemodel"
    caffe_proto.write_caffemodel(path, layers, legacy=True)  # DeepLab-v1's `layers` (V1) format
    assert all(layer.legacy for layer in caffe_proto.read_caffemodel(path))

    variables, report = import_weights("caffe", path, "deeplab_v1_largefov", 4, fc_width=32)
    flat = flatten(variables)
    np.testing.assert_array_equal(
        flat["params/head/fc6/kernel"], state["fc6.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(flat["params/head/fc8/bias"], state["fc8_voc12.bias"])
    np.testing.assert_array_equal(flat["params/backbone/conv5_3/bias"], state["conv5_3.bias"])
    assert len(report.assigned) == len(flat) == 2 * 16

    model = models.get_model("deeplab_v1_largefov", 4, fc_width=32)
    images = np.random.default_rng(3).uniform(0, 255, (1, 97, 97, 3)).astype(np.float32)
    ours = _run_ours(model, variables, images)
    reference = _run_torch(net, images)
    assert ours.shape == reference.shape == (1, 13, 13, 4)
    assert relative_error(ours, reference) <= 1e-5


def _v2_layers(tiny_v2, **kwargs):
    return caffe_layers_from_kazuto(tiny_v2[1], TINY_V2["stage_sizes"],
                                    np.random.default_rng(0), **kwargs)


def test_other_num_classes_needs_allow_missing_head(tiny_v2, tmp_path):
    path = tmp_path / "coco.caffemodel"
    caffe_proto.write_caffemodel(path, _v2_layers(tiny_v2, msc=False))
    with pytest.raises(WeightImportError, match=r"(?s)fc1_voc12_c0.*head/c0/kernel.*allow_missing"):
        import_weights("caffe", path, V2_MODEL, 7, **TINY_V2)
    variables, report = import_weights("caffe", path, V2_MODEL, 7, allow_missing="head", **TINY_V2)
    assert variables["params"]["head"]["c0"]["kernel"].shape[-1] == 7
    assert sorted(report.missing) == sorted(
        f"params/head/c{i}/{leaf}" for i in range(4) for leaf in ("kernel", "bias"))
    # The backbone still comes from the file.
    np.testing.assert_array_equal(
        variables["params"]["backbone"]["stem"]["conv1"]["bn"]["bias"],
        tiny_v2[1]["layer1.conv1.bn.bias"])
    # Only the missing variables are initialised (XLA drops the rest), and their values are those
    # of the whole model's initialisation with the same seed.
    model = models.get_model(V2_MODEL, 7, **TINY_V2)
    whole = flatten(importer._init_fn(model, seed=0)())
    for path in report.missing:
        np.testing.assert_array_equal(flatten(variables)[path], whole[path], err_msg=path)
    assert np.std(variables["params"]["head"]["c0"]["kernel"]) > 0


def test_missing_and_unknown_layers_are_listed(tiny_v2, tmp_path):
    layers = [layer for layer in _v2_layers(tiny_v2, msc=False) if layer[0] != "scale3a_branch2b"]
    layers.append(("fc1000", "InnerProduct", [np.zeros((10, 256), np.float32)]))
    layers.append(("mystery_conv", "Convolution", [np.zeros((2, 2, 1, 1), np.float32)]))
    path = tmp_path / "broken.caffemodel"
    caffe_proto.write_caffemodel(path, layers)
    with pytest.raises(WeightImportError) as error:
        import_weights("caffe", path, V2_MODEL, 5, **TINY_V2)
    message = str(error.value)
    assert str(path) in message
    assert "params/backbone/layer3/block1/conv3x3/bn/scale" in message  # missing
    assert "mystery_conv" in message and "fc1000" not in message  # unused; ImageNet fc ignored
    # 7 classes as in the test above: the same fresh-init program (a compile-cache hit).
    _, report = import_weights("caffe", path, V2_MODEL, 7, strict=False,
                               allow_missing="head,layer3/block1/conv3x3/bn", **TINY_V2)
    assert [name for name, _ in report.unused] == ["mystery_conv"]
    assert ("fc1000", "ImageNet classifier of the initialisation model") in report.ignored


def test_msc_copy_that_differs_is_reported(tiny_v2, tmp_path):
    layers = _v2_layers(tiny_v2)
    index = next(i for i, layer in enumerate(layers) if layer[0] == "conv1_res05")
    name, kind, blobs = layers[index]
    layers[index] = (name, kind, [blobs[0] + 1.0])
    path = tmp_path / "msc.caffemodel"
    caffe_proto.write_caffemodel(path, layers)
    with pytest.raises(WeightImportError, match="conv1_res05.*differs"):
        import_weights("caffe", path, V2_MODEL, 5, **TINY_V2)


def test_mis_shaped_blob_names_both_sides(tiny_v2, tmp_path):
    layers = [(n, k, [b[:, :4] if n == "res2a_branch2a" else b for b in blobs] if k ==
               "Convolution" else blobs) for n, k, blobs in _v2_layers(tiny_v2, msc=False)]
    path = tmp_path / "shape.caffemodel"
    caffe_proto.write_caffemodel(path, layers)
    with pytest.raises(WeightImportError, match=r"res2a_branch2a\[0\] -> params/backbone/layer2/"
                                                r"block1/reduce/conv/kernel: shape"):
        import_weights("caffe", path, V2_MODEL, 5, **TINY_V2)


def test_batch_norm_eps_other_than_the_model_is_refused(tmp_path):
    layer = caffe_proto.CaffeLayer("bn_conv1", "BatchNorm", [np.zeros(8, np.float32)] * 2 + [
        np.ones(1, np.float32)], bn_eps=1e-3)
    path = tmp_path / "eps.caffemodel"
    caffe_proto.write_caffemodel(path, [layer])
    with pytest.raises(WeightImportError, match="bn_epsilon=0.001"):
        import_weights("caffe", path, V2_MODEL, 5, strict=False, allow_missing=".", **TINY_V2)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "prototxt"])
def test_malformed_files_give_a_clean_error_naming_the_file(tmp_path, damage):
    good = caffe_proto.serialize_net(
        [("conv1_1", "Convolution", [np.ones((4, 3, 3, 3), np.float32), np.zeros(4, np.float32)])])
    content = {
        "truncated": good[: len(good) - 7],
        "garbage": bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)),
        "empty": b"",
        "prototxt": b'name: "vgg"\nlayers { name: "conv1_1" type: CONVOLUTION }\n',
    }[damage]
    path = tmp_path / f"{damage}.caffemodel"
    path.write_bytes(content)
    with pytest.raises(WeightImportError, match=str(path)):
        import_weights("caffe", path, "deeplab_v1_largefov", 21)


def _official_classes():
    """NetParameter classes built by protobuf from caffe.proto's field numbers (a subset)."""
    pytest.importorskip("google.protobuf", reason="protobuf is needed for the cross-check")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="caffe_subset.proto", package="caffe",
                                               syntax="proto2")

    def message(name, *fields):
        m = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name, packed in fields:
            f = m.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                f.type_name = f".caffe.{type_name}"
            if packed:
                f.options.packed = True

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("BlobShape", ("dim", 1, F.TYPE_INT64, rep, None, True))
    message("BlobProto", ("num", 1, F.TYPE_INT32, opt, None, False),
            ("channels", 2, F.TYPE_INT32, opt, None, False),
            ("height", 3, F.TYPE_INT32, opt, None, False),
            ("width", 4, F.TYPE_INT32, opt, None, False),
            ("data", 5, F.TYPE_FLOAT, rep, None, True),
            ("shape", 7, F.TYPE_MESSAGE, opt, "BlobShape", False),
            ("double_data", 8, F.TYPE_DOUBLE, rep, None, True))
    message("BatchNormParameter", ("eps", 3, F.TYPE_FLOAT, opt, None, False))
    message("LayerParameter", ("name", 1, F.TYPE_STRING, opt, None, False),
            ("type", 2, F.TYPE_STRING, opt, None, False),
            ("blobs", 7, F.TYPE_MESSAGE, rep, "BlobProto", False),
            ("batch_norm_param", 139, F.TYPE_MESSAGE, opt, "BatchNormParameter", False))
    message("V1LayerParameter", ("name", 4, F.TYPE_STRING, opt, None, False),
            ("type", 5, F.TYPE_INT32, opt, None, False),  # an enum on the wire is a varint
            ("blobs", 6, F.TYPE_MESSAGE, rep, "BlobProto", False))
    message("NetParameter", ("name", 1, F.TYPE_STRING, opt, None, False),
            ("layers", 2, F.TYPE_MESSAGE, rep, "V1LayerParameter", False),
            ("layer", 100, F.TYPE_MESSAGE, rep, "LayerParameter", False))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter"))


def test_wire_format_agrees_with_protobuf():
    NetParameter = _official_classes()
    rng = np.random.default_rng(4)
    kernel = rng.normal(size=(6, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(size=6).astype(np.float32)
    mean = rng.normal(size=300).astype(np.float32)

    # protobuf writes (current + legacy layouts, double data, legacy dims) -> we read.
    net = NetParameter(name="deeplab")
    layer = net.layer.add(name="res2a_branch2a", type="Convolution")
    layer.blobs.add(data=kernel.ravel()).shape.dim.extend(kernel.shape)
    bn = net.layer.add(name="bn2a_branch2a", type="BatchNorm")
    bn.blobs.add(double_data=mean.astype(np.float64)).shape.dim.extend([300])
    bn.batch_norm_param.eps = 2e-5
    old = net.layers.add(name="conv1_1", type=4)
    old.blobs.add(num=6, channels=3, height=3, width=3, data=kernel.ravel())
    old.blobs.add(num=1, channels=1, height=1, width=6, data=bias)
    ours = caffe_proto.parse_net(net.SerializeToString())
    # (protobuf writes fields in number order: the legacy `layers` (2) before `layer` (100))
    ours = {x.name: x for x in ours}
    assert {(x.name, x.type, x.legacy) for x in ours.values()} == {
        ("res2a_branch2a", "Convolution", False), ("bn2a_branch2a", "BatchNorm", False),
        ("conv1_1", "Convolution", True)}
    np.testing.assert_array_equal(ours["res2a_branch2a"].blobs[0], kernel)
    np.testing.assert_array_equal(ours["bn2a_branch2a"].blobs[0], mean)
    assert ours["bn2a_branch2a"].bn_eps == pytest.approx(2e-5)
    np.testing.assert_array_equal(ours["conv1_1"].blobs[0], kernel)
    np.testing.assert_array_equal(ours["conv1_1"].blobs[1].reshape(-1), bias)

    # We write -> protobuf reads.
    for legacy in (False, True):
        data = caffe_proto.serialize_net(
            [("conv1_1", "Convolution", [kernel, bias])], legacy=legacy, name="x")
        parsed = NetParameter.FromString(data)
        layers = parsed.layers if legacy else parsed.layer
        assert len(layers) == 1 and layers[0].name == "conv1_1"
        assert layers[0].type == (4 if legacy else "Convolution")
        blob = layers[0].blobs[0]
        dims = ([blob.num, blob.channels, blob.height, blob.width] if legacy
                else list(blob.shape.dim))
        assert dims == list(kernel.shape)
        np.testing.assert_array_equal(np.array(blob.data, np.float32), kernel.ravel())
