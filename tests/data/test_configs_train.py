"""Each data set's config trains a few steps on its fake layout (tiny model, tiny crops).

What this catches: a descriptor, builder and config that do not fit together (class counts,
split names, label values the loss rejects, eval shapes). The model is swapped for the small demo
ResNet (about a minute per data set on 2 cores, mostly compilation); the rest is the config
file's. Marked slow.
"""

import importlib

import pytest

from deeplab_jax import experiment
from deeplab_jax.data import sources
from deeplab_jax.train.loop import train_and_evaluate
from tests.helpers import official_layouts as layouts

pytestmark = pytest.mark.slow


def _tiny(config, tmp_path, manual_dir):
    config.dataset.data_dir = str(tmp_path / "tfds")
    config.dataset.manual_dir = str(manual_dir)
    config.model.name = "deeplab_v2_demo"
    config.model.overrides = {"widths": (8, 8, 16, 16), "stem_width": 8}
    config.model.init_checkpoint = ""
    config.input.crop_size = (17, 17)
    config.input.worker_count = 0
    config.eval.size = (25, 33)  # the fake layouts are 24x32
    config.batch_size = 8
    config.eval.batch_size = 8
    config.num_steps = 2
    config.eval.every_steps = 2
    config.checkpoint_every_steps = 2
    config.log_every_steps = 1
    config.predict.num_images = 0
    config.eval.num_overlays = 0
    config.progress_bar = False
    return config


def _write_voc(rng, root):
    layouts.write_voc(root, rng, with_sbd=True)


def _write_context(rng, root):
    layouts.write_context(root, rng, {i: rng.integers(0, 460, (layouts.HEIGHT, layouts.WIDTH))
                                    for i in layouts.CONTEXT_TRAIN + layouts.CONTEXT_VAL})


def _write_person_part(rng, root):
    layouts.write_person_part_release(root, rng, {
        i: layouts.random_label(rng, 7) for i in layouts.PERSON_TRAIN + layouts.PERSON_VAL})


def _write_cityscapes(rng, root):
    shape = (layouts.HEIGHT, layouts.WIDTH)
    layouts.write_cityscapes(root, rng, {
        "train": {"aachen": [rng.integers(0, 34, shape) for _ in range(3)]},
        "val": {"frankfurt": [rng.integers(0, 34, shape) for _ in range(2)]}})


def _write_coco_stuff(rng, root):
    shape = (layouts.HEIGHT, layouts.WIDTH)
    layouts.write_coco_stuff(root, rng, {
        "train2017": {f"{i:012d}": rng.choice([0, 5, 91, 181, 255], shape) for i in range(3)},
        "val2017": {f"{i:012d}": rng.choice([0, 91, 255], shape) for i in range(10, 12)}})


@pytest.mark.parametrize("config_module, write", [
    ("voc", _write_voc),
    ("context", _write_context),
    ("person_part", _write_person_part),
    ("cityscapes", _write_cityscapes),
    ("cocostuff", _write_coco_stuff),
])
def test_config_trains_on_fake_layout(config_module, write, tmp_path, rng):
    config = importlib.import_module(f"configs.{config_module}").get_config()
    write(rng, tmp_path / "manual")
    descriptor = experiment.dataset_descriptor(config)
    config = _tiny(config, tmp_path, tmp_path / "manual")
    results = train_and_evaluate(config, str(tmp_path / "workdir"))
    # Every labelled val pixel was scored once, over the data set's own K classes.
    val = sources.load_split(descriptor, descriptor.eval_split, config.dataset.data_dir)
    labelled = sum(int((val[i]["label"] != 255).sum()) for i in range(len(val)))
    assert results["confusion"].shape == (descriptor.num_classes, descriptor.num_classes)
    assert int(results["confusion"].sum()) == labelled > 0
    assert 0.0 <= results["miou"] <= 1.0


def test_folder_dataset_trains(tmp_path, rng):
    """A custom folder through the VOC config with config.dataset.name='folder'."""
    root = tmp_path / "manual"
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("background\nthing\nstuff\n")
    for index in range(10):
        layouts.write_jpeg(str(root / "images" / f"{index:03d}.jpg"), rng)
        layouts.write_gray_png(str(root / "masks" / f"{index:03d}.png"),
                               layouts.random_label(rng, 3))
    config = importlib.import_module("configs.voc").get_config()
    config.dataset.name = "folder"
    config = _tiny(config, tmp_path, root)
    descriptor = experiment.dataset_descriptor(config)
    results = train_and_evaluate(config, str(tmp_path / "workdir"))
    assert results["confusion"].shape == (3, 3) and descriptor.splits == {"train": 9, "val": 1}
