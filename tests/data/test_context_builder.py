"""pascal_context on a fake release: the 459 -> 59 + background mapping, pixel by pixel."""

import os

import numpy as np
import pytest

from deeplab_jax.data.builders.validation import BadExampleError
from tests.helpers import official_layouts as layouts

# Independent truth: the 459-class ids of the 59 classes (+0) as listed by the Detail-API
# converters (PyTorch-Encoding / MMSegmentation pascal_context.py), sorted: the k-th is class k.
DETAIL_API_IDS = sorted([
    0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162,
    420, 454, 295, 296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72,
    458, 34, 207, 80, 355, 85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115])


def _label_maps(rng):
    every_value = (np.arange(layouts.HEIGHT * layouts.WIDTH) % 460).reshape(layouts.HEIGHT,
                                                                            layouts.WIDTH)
    maps = {layouts.CONTEXT_TRAIN[0]: every_value}
    for image_id in layouts.CONTEXT_TRAIN[1:] + layouts.CONTEXT_VAL:
        maps[image_id] = rng.integers(0, 460, (layouts.HEIGHT, layouts.WIDTH))
    return maps


def test_splits_round_trip_and_459_to_60_mapping(tmp_path, rng, build):
    maps = _label_maps(rng)
    voc = layouts.write_context(tmp_path / "manual", rng, maps)
    builder = build("pascal_context", tmp_path / "manual")
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"train": 3, "val": 2}
    expected_of = np.zeros(460, np.uint8)
    expected_of[DETAIL_API_IDS] = np.arange(60)
    records = {**layouts.read_split(builder, "train"), **layouts.read_split(builder, "val")}
    assert sorted(records) == sorted(maps)
    for image_id, record in records.items():
        np.testing.assert_array_equal(
            record["image"],
            layouts.decode_file_rgb(os.path.join(voc, "JPEGImages", f"{image_id}.jpg")))
        np.testing.assert_array_equal(record["label"], expected_of[maps[image_id]])
    all_values = records[layouts.CONTEXT_TRAIN[0]]["label"]
    assert sorted(np.unique(all_values).tolist()) == list(range(60))  # every class reached


def test_official_label_files_are_checked(tmp_path, rng, build):
    from deeplab_jax.data.builders import label_maps
    layouts.write_context(tmp_path / "manual", rng, _label_maps(rng))
    with open(tmp_path / "manual" / "labels.txt", "w") as stream:
        stream.write("".join(f"{i}: {name}\n" for i, name in
                             enumerate(label_maps.CONTEXT_459_CLASSES, start=1)))
    with open(tmp_path / "manual" / "59_labels.txt", "w") as stream:
        stream.write("".join(f"{i}: {name}\n" for i, name in
                             enumerate(label_maps.CONTEXT_59_CLASSES, start=1)))
    build("pascal_context", tmp_path / "manual")  # matching files: fine
    with open(tmp_path / "manual" / "59_labels.txt", "a") as stream:
        stream.write("60: unicorn\n")
    with pytest.raises(BadExampleError, match="59_labels.txt.*class list differs"):
        build("pascal_context", tmp_path / "manual")


def test_label_map_out_of_range_and_missing_mat(tmp_path, rng, build):
    maps = _label_maps(rng)
    maps[layouts.CONTEXT_VAL[0]][0, 0] = 460
    layouts.write_context(tmp_path / "manual", rng, maps)
    with pytest.raises(BadExampleError, match=r"LabelMap values \[460\] outside 0..459"):
        build("pascal_context", tmp_path / "manual")
    os.remove(tmp_path / "manual" / "trainval" / f"{layouts.CONTEXT_TRAIN[1]}.mat")
    builder = build("pascal_context", tmp_path / "manual", skip_bad=True)
    skipped = builder.info.metadata["skipped"]
    assert skipped["train"]["count"] == 1 and "file not found" in skipped["train"]["examples"][0]
    assert skipped["val"]["count"] == 1 and "460" in skipped["val"]["examples"][0]
