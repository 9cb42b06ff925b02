"""voc2012_segmentation (default and trainaug) on a fake VOCdevkit + SBD layout."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from deeplab_jax.data.builders import voc
from tests.helpers import official_layouts as layouts


def test_default_splits_and_exact_round_trip(tmp_path, rng, build):
    truth = layouts.write_voc(tmp_path / "manual", rng, with_sbd=False)
    builder = build("voc2012_segmentation/default", tmp_path / "manual")
    sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
    assert sizes == {"train": 5, "val": 3, "trainval": 8}
    records = layouts.read_split(builder, "trainval")
    assert sorted(records) == sorted(layouts.VOC_TRAIN + layouts.VOC_VAL)
    for image_id, record in records.items():
        image_path = os.path.join(truth["voc"], "JPEGImages", f"{image_id}.jpg")
        np.testing.assert_array_equal(record["image"], layouts.decode_file_rgb(image_path))
        # Palette indices, 255 band included, not the palette colours.
        np.testing.assert_array_equal(record["label"], truth["labels"][image_id])
        assert (record["label"] == 255).any()
    assert builder.info.features["image"].encoding_format == "jpeg"
    assert builder.info.metadata["skipped_count"] == 0


def test_original_jpeg_bytes_are_stored_untouched(tmp_path, rng, build):
    truth = layouts.write_voc(tmp_path / "manual", rng, with_sbd=False)
    builder = build("voc2012_segmentation/default", tmp_path / "manual")
    # Decoding disabled: the stored bytes are the file's bytes.
    raw = builder.as_data_source(split="val", decoders={"image": tfds.decode.SkipDecoding()})
    for index in range(len(raw)):
        record = raw[index]
        image_id = record["image_id"].decode() if isinstance(record["image_id"], bytes) \
            else record["image_id"]
        with open(os.path.join(truth["voc"], "JPEGImages", f"{image_id}.jpg"), "rb") as stream:
            assert record["image"] == stream.read()


def test_trainaug_set_arithmetic_and_label_sources(tmp_path, rng, build):
    truth = layouts.write_voc(tmp_path / "manual", rng, with_sbd=True)
    builder = build("voc2012_segmentation/trainaug", tmp_path / "manual")
    expected_train = (set(layouts.VOC_TRAIN) | set(layouts.SBD_TRAIN) | set(layouts.SBD_VAL)) \
        - set(layouts.VOC_VAL)
    # Written out by hand from the lists in conftest: the union minus the 2 VOC-val ids SBD holds.
    assert expected_train == {"2007_000032", "2007_000039", "2008_000015", "2009_000123",
                              "2011_000003", "2008_000099", "2008_000100", "2009_000200"}
    train = layouts.read_split(builder, "train")
    assert set(train) == expected_train
    assert set(layouts.read_split(builder, "val")) == set(layouts.VOC_VAL)
    for image_id, record in train.items():
        if image_id in truth["labels"]:  # VOC mask preferred (has the 255 band)
            np.testing.assert_array_equal(record["label"], truth["labels"][image_id])
        else:
            np.testing.assert_array_equal(record["label"], truth["sbd_labels"][image_id])
            assert not (record["label"] == 255).any()  # SBD has no boundary band


def test_trainaug_ids_function_matches_paper_definition():
    assert voc.trainaug_ids(["a", "b"], ["b", "c", "d", "e"], ["d"]) == ["a", "b", "c", "e"]


def test_official_sizes_asserted_only_for_full_data(tmp_path, rng, build):
    layouts.write_voc(tmp_path / "manual", rng, with_sbd=False)
    from deeplab_jax.data.builders.validation import DataNotFoundError
    with pytest.raises(DataNotFoundError, match=r"train: found 5, official release has 1464"):
        build("voc2012_segmentation/default", tmp_path / "manual", full_data=True)


def test_builds_from_the_original_tar_archives(tmp_path, rng, build):
    """VOCtrainval_11-May-2012.tar and benchmark.tgz in the manual dir, nothing extracted."""
    import shutil
    manual = tmp_path / "manual"
    truth = layouts.write_voc(manual, rng, with_sbd=True)
    layouts.archive(manual, ["VOCdevkit"], manual / "VOCtrainval_11-May-2012.tar")
    layouts.archive(manual, ["benchmark_RELEASE"], manual / "benchmark.tgz")
    shutil.rmtree(manual / "VOCdevkit")
    shutil.rmtree(manual / "benchmark_RELEASE")
    builder = build("voc2012_segmentation/trainaug", manual)
    train = layouts.read_split(builder, "train")
    assert len(train) == 8
    for image_id, record in train.items():
        expected = truth["labels"].get(image_id, truth["sbd_labels"].get(image_id))
        np.testing.assert_array_equal(record["label"], expected)


def test_full_release_detection(tmp_path):
    from deeplab_jax.data import sources
    builder = sources.get_builder("voc2012_segmentation/trainaug", str(tmp_path))
    assert not builder._is_full_data({"train": 8, "val": 3})  # a test's fake copy
    assert builder._is_full_data({"train": 5291, "val": 3})  # half of 10,582: the real release
    forced = sources.get_builder("voc2012_segmentation/trainaug", str(tmp_path), full_data=False)
    assert not forced._is_full_data({"train": 10582, "val": 1449})
