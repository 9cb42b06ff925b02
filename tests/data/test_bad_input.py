"""Bad input: one clear error naming the file and the problem, or skip_bad=True records it."""

import logging
import os

import numpy as np
import pytest
from PIL import Image

from deeplab_jax.data import datasets, sources
from deeplab_jax.data.builders.validation import BadExampleError, DataNotFoundError
from tests.helpers import official_layouts as layouts


def _voc_paths(voc, image_id):
    return (os.path.join(voc, "JPEGImages", f"{image_id}.jpg"),
            os.path.join(voc, "SegmentationClass", f"{image_id}.png"))


def _corrupt_jpeg(voc, image_id):
    image, _ = _voc_paths(voc, image_id)
    with open(image, "wb") as stream:
        stream.write(b"this is not a JPEG file at all" * 10)
    return image, "corrupt or unsupported image"


def _truncated_jpeg(voc, image_id):
    image, _ = _voc_paths(voc, image_id)
    data = open(image, "rb").read()
    open(image, "wb").write(data[: len(data) // 2])
    return image, "truncated JPEG"


def _truncated_png(voc, image_id):
    _, mask = _voc_paths(voc, image_id)
    data = open(mask, "rb").read()
    open(mask, "wb").write(data[: len(data) - 30])
    return mask, "corrupt or truncated mask PNG"


def _size_mismatch(voc, image_id):
    _, mask = _voc_paths(voc, image_id)
    layouts.write_palette_png(mask, np.zeros((layouts.HEIGHT - 4, layouts.WIDTH), np.uint8))
    return mask, f"mask is {layouts.HEIGHT - 4}x{layouts.WIDTH} but its image"


def _label_out_of_range(voc, image_id):
    _, mask = _voc_paths(voc, image_id)
    label = np.zeros((layouts.HEIGHT, layouts.WIDTH), np.uint8)
    label[3:5, 3:5] = 30
    layouts.write_palette_png(mask, label)
    return mask, r"label values \[30\] outside \[0, 21\)"


def _listed_without_file(voc, image_id):
    image, _ = _voc_paths(voc, image_id)
    os.remove(image)
    return image, "file not found"


FAULTS = [_corrupt_jpeg, _truncated_jpeg, _truncated_png, _size_mismatch, _label_out_of_range,
          _listed_without_file]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.__name__.strip("_"))
def test_bad_example_fails_the_build_naming_file_and_problem(fault, tmp_path, rng, build):
    truth = layouts.write_voc(tmp_path / "manual", rng, with_sbd=False)
    path, problem = fault(truth["voc"], layouts.VOC_VAL[1])
    with pytest.raises(BadExampleError, match=problem) as error:
        build("voc2012_segmentation/default", tmp_path / "manual")
    assert error.value.path == path
    assert path in str(error.value) and "skip_bad=True" in str(error.value)


def test_skip_bad_records_count_and_names_in_info_and_log(tmp_path, rng, build, caplog):
    truth = layouts.write_voc(tmp_path / "manual", rng, with_sbd=False)
    bad_paths = {}
    # 4 bad train examples of 5, 2 bad val examples of 3.
    for fault, image_id in zip(FAULTS, layouts.VOC_TRAIN[:4] + layouts.VOC_VAL[:2]):
        bad_paths[image_id] = fault(truth["voc"], image_id)[0]
    with caplog.at_level(logging.WARNING):
        builder = build("voc2012_segmentation/default", tmp_path / "manual", skip_bad=True)
    good = sorted(set(layouts.VOC_TRAIN + layouts.VOC_VAL) - set(bad_paths))
    assert sorted(layouts.read_split(builder, "trainval")) == good
    sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
    assert sizes == {"train": 1, "val": 1, "trainval": 2}
    skipped = sources.skipped_examples(builder)
    assert skipped["train"]["count"] == 4 and skipped["val"]["count"] == 2
    assert skipped["trainval"]["count"] == 6
    assert builder.info.metadata["skipped_count"] == 12
    for image_id, path in bad_paths.items():
        assert any(line.startswith(f"{image_id} ({path}): ")
                   for line in skipped["trainval"]["examples"])
        assert any(path in record.getMessage() for record in caplog.records)
    # Stored with the data set: a later reader sees the same record.
    reread = sources.get_builder("voc2012_segmentation/default", builder.data_dir.split(
        "/voc2012_segmentation")[0])
    assert sources.skipped_examples(reread) == skipped


def test_missing_directories_listed_in_one_error(tmp_path, build):
    manual = tmp_path / "manual"
    (manual / "VOCdevkit" / "VOC2012" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(DataNotFoundError) as error:
        build("voc2012_segmentation/trainaug", manual)
    message = str(error.value)
    for expected in ("VOCdevkit/VOC2012/SegmentationClass", "ImageSets/Segmentation/train.txt",
                     "benchmark_RELEASE/dataset/cls", "benchmark_RELEASE/dataset/train.txt",
                     "benchmark.tgz", "Expected layout"):
        assert expected in message
    assert "VOCdevkit/VOC2012/JPEGImages\n" not in message  # present, so not listed as missing


def test_prepare_without_manual_dir_says_what_to_put_where(tmp_path):
    # Registration-gated releases are never downloaded: without (or with an absent) manual
    # directory the error says what to put where.
    for name in ("person_part", "cityscapes"):
        descriptor = datasets.get_dataset(name)
        for manual_dir in (str(tmp_path / "absent"), None):
            with pytest.raises(DataNotFoundError, match="not downloaded at run time") as error:
                sources.prepare(descriptor, str(tmp_path / "tfds"), manual_dir)
            assert descriptor.tfds_name in str(error.value)
    # Public releases download themselves when no manual directory is given; one that is given
    # but absent is a mistake, not a reason to download.
    for name in ("voc2012_trainaug", "pascal_context", "coco_stuff164k"):
        descriptor = datasets.get_dataset(name)
        (tmp_path / "empty").mkdir(exist_ok=True)
        for manual_dir in (tmp_path / "absent", tmp_path / "empty"):
            with pytest.raises(DataNotFoundError,
                               match="does not exist or is empty .set it to '' to download"
                               ) as error:
                sources.prepare(descriptor, str(tmp_path / "tfds"), str(manual_dir))
            assert descriptor.tfds_name in str(error.value)
            assert "Layout:" in str(error.value)


def test_corrupt_mask_written_as_rgb_is_rejected(tmp_path, rng, build):
    """An RGB mask (colours, not ids) is a layout mistake, reported as such."""
    truth = layouts.write_voc(tmp_path / "manual", rng, with_sbd=False)
    _, mask = _voc_paths(truth["voc"], layouts.VOC_TRAIN[0])
    Image.fromarray(np.zeros((layouts.HEIGHT, layouts.WIDTH, 3), np.uint8)).save(mask)
    with pytest.raises(BadExampleError, match="mode 'RGB'"):
        build("voc2012_segmentation/default", tmp_path / "manual")


def test_split_with_only_bad_examples_says_so(tmp_path, rng, build):
    truth = layouts.write_voc(tmp_path / "manual", rng, with_sbd=False)
    for image_id in layouts.VOC_VAL:
        _listed_without_file(truth["voc"], image_id)
    with pytest.raises(ValueError, match=r"all 3 examples of split 'val' are bad"):
        build("voc2012_segmentation/default", tmp_path / "manual", skip_bad=True)


def test_skip_bad_reaches_the_builder_through_sources(tmp_path, rng):
    """sources.load_split(..., skip_bad=True): the path config.dataset.skip_bad takes."""
    truth = layouts.write_voc(tmp_path / "manual", rng, with_sbd=False)
    _listed_without_file(truth["voc"], layouts.VOC_VAL[0])
    descriptor = datasets.get_dataset("voc2012")
    with pytest.raises(BadExampleError, match="file not found"):
        sources.load_split(descriptor, "val", str(tmp_path / "a"), str(tmp_path / "manual"))
    val = sources.load_split(descriptor, "val", str(tmp_path / "b"), str(tmp_path / "manual"),
                             skip_bad=True)
    assert len(val) == 2
    builder = sources.prepare(descriptor, str(tmp_path / "b"))  # already built: just opened
    assert sources.skipped_examples(builder)["val"]["count"] == 1


def test_tfds_name_of_another_data_set_is_a_configuration_error(tmp_path, rng):
    """configs/demo.py:tiny pins the demo builder; with --config.dataset.name=folder the error
    names both fields and the fix instead of failing inside TFDS."""
    import dataclasses

    from configs import demo as demo_config

    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("background\nthing\n")
    for index in range(3):
        layouts.write_jpeg(str(root / "images" / f"{index}.jpg"), rng)
        layouts.write_gray_png(str(root / "masks" / f"{index}.png"), layouts.random_label(rng, 2))
    tfds_name = demo_config.get_config("tiny").dataset.tfds_name
    descriptor = dataclasses.replace(datasets.get_dataset("folder", str(root)), tfds_name=tfds_name)
    with pytest.raises(sources.DatasetConfigError) as error:
        sources.load_split(descriptor, "train", str(tmp_path / "tfds"), str(root), skip_bad=True)
    message = str(error.value)
    for expected in (f"config.dataset.tfds_name={tfds_name!r}", "config.dataset.name='folder'",
                     "--config.dataset.tfds_name=''", "'deeplab_demo'", "'folder_segmentation'"):
        assert expected in message
    # A config of the data set's own builder is fine.
    voc = dataclasses.replace(datasets.get_dataset("voc2012_trainaug"),
                              tfds_name="voc2012_segmentation/default")
    sources.check_builder_fits(voc)


def test_generated_builder_rejects_manual_directory_options(tmp_path):
    with pytest.raises(sources.DatasetConfigError,
                       match="'deeplab_demo' builder generates its data.*skip_bad"):
        sources.get_builder("deeplab_demo/tiny", str(tmp_path), skip_bad=True)
    sources.get_builder("deeplab_demo/tiny", str(tmp_path), skip_bad=None)  # unset: fine
