"""coco_stuff164k on a fake COCO 2017 + stuffthingmaps layout: 182 ids -> 171 classes."""

import os

import numpy as np
import pytest

from deeplab_jax.data.builders.validation import BadExampleError
from tests.helpers import official_layouts as layouts

# labels.md ids removed from COCO (1-based); stuffthingmaps store id - 1.
REMOVED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)


def _expected(raw):
    """Hand rule: drop the removed values, renumber the rest in order; 255 stays."""
    used = [value for value in range(182) if value + 1 not in REMOVED_IDS]
    table = np.full(256, 255, np.uint8)
    table[used] = np.arange(171)
    return table[raw]


def test_mapping_and_round_trip(tmp_path, rng, build):
    used = np.array([v for v in range(182) if v + 1 not in REMOVED_IDS] + [255], np.uint8)
    every = used[np.arange(layouts.HEIGHT * layouts.WIDTH) % used.size].reshape(layouts.HEIGHT,
                                                                            layouts.WIDTH)
    labels = {"train2017": {"000000000009": every,
                            "000000000025": rng.choice(used, (layouts.HEIGHT, layouts.WIDTH))},
              "val2017": {"000000000139": rng.choice(used, (layouts.HEIGHT, layouts.WIDTH))}}
    layouts.write_coco_stuff(tmp_path / "manual", rng, labels)
    builder = build("coco_stuff164k", tmp_path / "manual")
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"train": 2, "val": 1}
    for split, folder in (("train", "train2017"), ("val", "val2017")):
        records = layouts.read_split(builder, split)
        assert sorted(records) == sorted(labels[folder])
        for image_id, record in records.items():
            np.testing.assert_array_equal(record["label"], _expected(labels[folder][image_id]))
            np.testing.assert_array_equal(record["image"], layouts.decode_file_rgb(os.path.join(
                tmp_path, "manual", "images", folder, f"{image_id}.jpg")))
    train_every = layouts.read_split(builder, "train")["000000000009"]["label"]
    assert sorted(np.unique(train_every).tolist()) == list(range(171)) + [255]
    # Spot values from labels.md: person (id 1) -> 0, banner (id 92) -> 80, wood (id 182) -> 170.
    assert _expected(np.array([0, 91, 181], np.uint8)).tolist() == [0, 80, 170]


def test_removed_ids_and_missing_label_are_bad(tmp_path, rng, build):
    bad = np.zeros((layouts.HEIGHT, layouts.WIDTH), np.uint8)
    bad[0, 0] = 11  # 'street sign', removed from COCO
    labels = {"train2017": {"000000000009": bad,
                            "000000000025": np.zeros((layouts.HEIGHT, layouts.WIDTH), np.uint8)},
              "val2017": {"000000000139": np.zeros((layouts.HEIGHT, layouts.WIDTH), np.uint8)}}
    layouts.write_coco_stuff(tmp_path / "manual", rng, labels)
    with pytest.raises(BadExampleError, match=r"label values \[11\]"):
        build("coco_stuff164k", tmp_path / "manual")
    os.remove(tmp_path / "manual" / "stuffthingmaps_trainval2017" / "val2017" / "000000000139.png")
    layouts.write_jpeg(str(tmp_path / "manual" / "images" / "val2017" / "000000000285.jpg"), rng)
    layouts.write_gray_png(str(tmp_path / "manual" / "stuffthingmaps_trainval2017" / "val2017" /
                               "000000000285.png"),
                           np.zeros((layouts.HEIGHT, layouts.WIDTH), np.uint8))
    builder = build("coco_stuff164k", tmp_path / "manual", skip_bad=True)
    skipped = builder.info.metadata["skipped"]
    assert skipped["train"]["count"] == 1 and skipped["val"]["count"] == 1
    assert "000000000139.png): file not found" in skipped["val"]["examples"][0]
