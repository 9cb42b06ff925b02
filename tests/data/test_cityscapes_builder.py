"""cityscapes_semantic on a fake leftImg8bit + gtFine layout: labelId -> trainId, PNG round trip."""

import shutil

import numpy as np
import pytest

from deeplab_jax.data.builders.validation import BadExampleError
from tests.helpers import official_layouts as layouts

# Hand-written from cityscapesScripts labels.py: the 19 evaluated labelIds and their trainIds.
TRAIN_ID_OF = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
               25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _expected_train_ids(label_ids):
    expected = np.full(label_ids.shape, 255, np.uint8)
    for label_id, train_id in TRAIN_ID_OF.items():
        expected[label_ids == label_id] = train_id
    return expected


def _layout(rng, root):
    every_id = (np.arange(layouts.HEIGHT * layouts.WIDTH) % 34).reshape(layouts.HEIGHT,
                                                                        layouts.WIDTH)
    cities = {
        "train": {"aachen": [every_id, rng.integers(0, 34, (layouts.HEIGHT, layouts.WIDTH))],
                  "bochum": [rng.integers(0, 34, (layouts.HEIGHT, layouts.WIDTH))]},
        "val": {"frankfurt": [rng.integers(0, 34, (layouts.HEIGHT, layouts.WIDTH))]},
        "test": {"berlin": [np.zeros((layouts.HEIGHT, layouts.WIDTH), np.uint8)]},
    }
    return layouts.write_cityscapes(root, rng, cities)


def _check(builder, truth):
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
        "train": 3, "val": 1, "test": 1}
    for split in ("train", "val", "test"):
        for stem, record in layouts.read_split(builder, split).items():
            truth_split, image, label_ids = truth[stem]
            assert truth_split == split
            np.testing.assert_array_equal(record["image"], image)  # lossless PNG, exact
            np.testing.assert_array_equal(record["label"], _expected_train_ids(label_ids))


def test_train_ids_and_exact_png_round_trip(tmp_path, rng, build):
    truth = _layout(rng, tmp_path / "manual")
    builder = build("cityscapes_semantic", tmp_path / "manual")
    _check(builder, truth)
    assert builder.info.features["image"].encoding_format == "png"
    every = layouts.read_split(builder, "train")["aachen_000000_000000"]["label"]
    assert sorted(np.unique(every).tolist()) == list(range(19)) + [255]


def test_builds_from_the_original_zip_archives(tmp_path, rng, build):
    manual = tmp_path / "manual"
    truth = _layout(rng, manual)
    for folder, archive in (("leftImg8bit", "leftImg8bit_trainvaltest.zip"),
                            ("gtFine", "gtFine_trainvaltest.zip")):
        layouts.archive(manual, [folder], manual / archive)
        shutil.rmtree(manual / folder)
    _check(build("cityscapes_semantic", manual), truth)


def test_label_ids_beyond_33_are_rejected(tmp_path, rng, build):
    truth = _layout(rng, tmp_path / "manual")
    bad = np.full((layouts.HEIGHT, layouts.WIDTH), 7, np.uint8)
    bad[0, 0] = 40
    layouts.write_gray_png(str(tmp_path / "manual" / "gtFine" / "val" / "frankfurt" /
                             "frankfurt_000000_000000_gtFine_labelIds.png"), bad)
    del truth
    with pytest.raises(BadExampleError, match=r"labelIds \[40\] outside 0..33"):
        build("cityscapes_semantic", tmp_path / "manual")
