"""Training from ImageNet weights: convert -> init_checkpoint -> the training model's features.

Truth: the reference network the weights came from (torchvision's ResNet-101; a PyTorch ResNet in
the Caffe/MSRA layout written as a .caffemodel with the DeepLab-v2 release's layer names), run on
a photograph with the input normalisation that network was trained with. The training model is
built exactly as `train.loop` builds it (`init_weights.adopt_layout` -> `experiment.create_model`
-> `setup_state` -> `init_weights.load_into`), from configs/voc.py, whose models default to the
other layout in each case, so a layout that was not adopted shows up as a large error.
"""

import logging

import jax
import numpy as np
import pytest

from configs import voc
from deeplab_jax import experiment, weights
from deeplab_jax.parallel import mesh as mesh_lib
from deeplab_jax.train import init_weights
from deeplab_jax.train.state import setup_state
from deeplab_jax.weights import caffe_proto, model_info
from deeplab_jax.weights.convert import convert_to_directory

from tests.helpers.weights_reference import (
    backbone_features,
    caffe_bgr_nchw,
    caffe_layers_from_kazuto,
    imagenet_nchw,
    photograph,
    randomize_torch_,
    relative_error,
    torch_deeplab_v2,
    torch_or_skip,
    torch_state_numpy,
)

SIZE = 65  # ResNet-101 at full width on 2 cores: a small photograph keeps it to seconds


def _training_state(config, devices=None):
    """The loop's steps: layout adoption, the model from the config, a fresh state, the weights.
    `devices`: one device keeps ResNet-101's state to one copy (the mesh replicates parameters)."""
    config = init_weights.adopt_layout(config)
    descriptor = experiment.dataset_descriptor(config)
    model = experiment.create_model(config, descriptor)
    setup = setup_state(config, model, mesh_lib.create_mesh(devices))
    state = init_weights.load_into(setup.create(0), config.model.init_checkpoint, setup.shardings)
    return config, model, state


def test_torchvision_resnet101_trains_in_the_torchvision_layout(tmp_path):
    """configs/voc.py defaults to the Caffe layout (BGR mean input, stride on the 1x1 conv,
    ceil-mode pooling); weights converted from torchvision bring theirs."""
    torch = torch_or_skip()
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet101(weights=None,
                                       replace_stride_with_dilation=[False, True, True])
    randomize_torch_(net, seed=11)
    path = tmp_path / "resnet101.pth"
    torch.save(net.state_dict(), path)
    convert_to_directory("torchvision", path, "deeplab_v2_resnet101_aspp_l", 21,
                                 tmp_path / "init", allow_missing=("head",))

    config = voc.get_config()
    config.model.init_checkpoint = str(tmp_path / "init")
    config, model, state = _training_state(config, jax.devices()[:1])
    assert (config.model.overrides.input_norm, config.model.overrides.stride_on_3x3,
            config.model.overrides.pool_ceil_mode) == ("imagenet", True, False)

    image = photograph(SIZE)[None]
    ours = backbone_features(model, jax.device_get(state.variables()), image)
    trunk = torch.nn.Sequential(*[getattr(net, n) for n in (
        "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")])
    with torch.no_grad():
        expected = trunk(torch.from_numpy(imagenet_nchw(image))).numpy().transpose(0, 2, 3, 1)
    assert ours.shape == expected.shape == (1, 9, 9, 2048)
    assert relative_error(ours, expected) <= 1e-4


# ResNet-101's widths and names (stage 4 has blocks a, b1, b2 as res4a, res4b1, res4b2), fewer
# blocks: the full depth is checked with torchvision above.
CAFFE_STAGES = (1, 1, 3, 1)


def test_caffe_imagenet_resnet_trains_in_the_caffe_layout(tmp_path):
    """An ImageNet ResNet in the release's Caffe layout (conv1/bn_conv1/scale_conv1,
    res2a_branch1, ..., BatchNorm as sums / scale factor + Scale layer, the fc1000 classifier),
    trained with the v3 recipe, whose ResNet defaults to the torchvision layout."""
    torch = torch_or_skip()
    net = randomize_torch_(torch_deeplab_v2(
        21, stage_sizes=CAFFE_STAGES, widths=(64, 128, 256, 512), stem_width=64,
        rates=(6, 12, 18, 24)), seed=12)
    rng = np.random.default_rng(0)
    layers = caffe_layers_from_kazuto(torch_state_numpy(net), CAFFE_STAGES, rng, msc=False)
    layers = [layer for layer in layers if not layer[0].startswith("fc1_")]  # an ImageNet net
    layers.append(("fc1000", "InnerProduct", [rng.normal(size=(1000, 2048)).astype(np.float32),
                                              np.zeros(1000, np.float32)]))
    path = tmp_path / "init.caffemodel"
    caffe_proto.write_caffemodel(path, layers)
    convert_to_directory("caffe", path, "deeplab_v2_resnet101_aspp_l", 21,
                                 tmp_path / "init", allow_missing=("head",),
                                 overrides=dict(stage_sizes=CAFFE_STAGES))

    config = voc.get_config("v3")
    config.model.init_checkpoint = str(tmp_path / "init")
    # Recipe choices, not layout: the reference runs at output stride 8 without multi-grid.
    config.model.overrides.stage_sizes = CAFFE_STAGES
    config.model.overrides.output_stride = 8
    config.model.overrides.multi_grid = ()
    config, model, state = _training_state(config, jax.devices()[:1])
    assert (config.model.overrides.input_norm, config.model.overrides.stride_on_3x3,
            config.model.overrides.pool_ceil_mode) == ("caffe_bgr", False, True)

    image = photograph(SIZE, "chelsea")[None]
    ours = backbone_features(model, jax.device_get(state.variables()), image)
    trunk = torch.nn.Sequential(*[getattr(net, f"layer{i}") for i in range(1, 6)])
    with torch.no_grad():
        expected = trunk(torch.from_numpy(caffe_bgr_nchw(image))).numpy().transpose(0, 2, 3, 1)
    assert ours.shape == expected.shape
    assert relative_error(ours, expected) <= 1e-4


def _save_demo_weights(directory, config, num_classes, **changes):
    """Random variables of the config's model with their model info (no file format involved)."""
    from deeplab_jax import models

    overrides = {**experiment.model_overrides(config), **changes}
    model = models.get_model(config.model.name, num_classes, **overrides)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(3), np.zeros((1, 33, 33, 3))))
    rng = np.random.default_rng(3)  # random values in the model's shapes: no compile needed
    variables = jax.tree.map(lambda leaf: rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32),
                             shapes)
    info = model_info.make_model_info(config.model.name, num_classes, overrides, "test", "-")
    weights.save_variables(directory, variables, model_info=info)
    return variables


def test_a_head_of_another_shape_is_reinitialised(tiny_config, tmp_path, caplog):
    """8 demo classes in the config, 5 in the file: the backbone is loaded, the head is not."""
    saved = _save_demo_weights(tmp_path / "w5", tiny_config, 5)
    tiny_config.model.init_checkpoint = str(tmp_path / "w5")
    with caplog.at_level(logging.WARNING):
        _, _, state = _training_state(tiny_config)
    assert "head/c0/kernel" in caplog.text and "re-initialised" in caplog.text
    params = jax.device_get(state.params)
    np.testing.assert_array_equal(params["backbone"]["stem"]["conv1"]["conv"]["kernel"],
                                  saved["params"]["backbone"]["stem"]["conv1"]["conv"]["kernel"])
    assert params["head"]["c0"]["kernel"].shape[-1] == 8


def test_an_explicit_other_layout_is_a_clear_error(tiny_config, tmp_path):
    """The demo model defaults to ImageNet input; weights in the Caffe layout are adopted unless
    the config explicitly asks for a third normalisation."""
    _save_demo_weights(tmp_path / "caffe", tiny_config, 8, input_norm="caffe_bgr")
    tiny_config.model.init_checkpoint = str(tmp_path / "caffe")
    adopted = init_weights.adopt_layout(tiny_config)
    assert adopted.model.overrides.input_norm == "caffe_bgr"
    assert tiny_config.model.overrides.input_norm == "imagenet"  # a copy; the original is intact
    tiny_config.model.overrides.input_norm = "inception"
    with pytest.raises(ValueError, match=r"input_norm='inception' \(the weights need 'caffe_bgr'"):
        init_weights.adopt_layout(tiny_config)
    # A checkpoint without deeplab_model.json carries no layout: the config is kept.
    weights.save_npz(tmp_path / "plain.npz", {"params": {}})
    tiny_config.model.init_checkpoint = str(tmp_path / "plain.npz")
    assert init_weights.adopt_layout(tiny_config) is tiny_config


def test_a_runs_checkpoints_are_read_in_the_runs_layout(tiny_config, tmp_path):
    """evaluate/predict/export --workdir: the layout in the run's config.json (what the loop
    trained, e.g. adopted from its init_checkpoint) wins over the command line's defaults."""
    import copy

    trained = copy.deepcopy(tiny_config)
    trained.model.overrides.input_norm = "caffe_bgr"
    (tmp_path / "config.json").write_text(trained.to_json_best_effort(indent=2))
    adopted = init_weights.adopt_run_layout(tiny_config, tmp_path)
    assert adopted.model.overrides.input_norm == "caffe_bgr"
    assert init_weights.adopt_run_layout(tiny_config, tmp_path / "absent") is tiny_config
