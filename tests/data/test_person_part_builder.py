"""pascal_person_part: the merged-label release, and the merge from PASCAL-Part .mat files."""

import os

import numpy as np

from deeplab_jax.data.builders import label_maps
from tests.helpers import official_layouts as layouts


def test_release_layout_round_trip(tmp_path, rng, build):
    labels = {i: layouts.random_label(rng, 7, border=False)
              for i in layouts.PERSON_TRAIN + layouts.PERSON_VAL}
    layouts.write_person_part_release(tmp_path / "manual", rng, labels)
    builder = build("pascal_person_part", tmp_path / "manual")
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"train": 2, "val": 3}
    voc = tmp_path / "manual" / "VOCdevkit" / "VOC2010"
    for split, ids in (("train", layouts.PERSON_TRAIN), ("val", layouts.PERSON_VAL)):
        records = layouts.read_split(builder, split)
        assert sorted(records) == sorted(ids)
        for image_id, record in records.items():
            np.testing.assert_array_equal(record["label"], labels[image_id])
            np.testing.assert_array_equal(
                record["image"],
                layouts.decode_file_rgb(str(voc / "JPEGImages" / f"{image_id}.jpg")))


def test_merge_of_pascal_part_annotations(tmp_path, rng, build):
    """Every PASCAL-Part person part lands in its merged class; other objects stay background."""
    manual = tmp_path / "manual"
    layouts.write_person_part_release(manual, rng, {})  # lists + images; labels come from .mat
    shape = (layouts.HEIGHT, layouts.WIDTH)
    # Hand-written merge (DeepLab-v2 §4.3): name -> class.
    merged_class = {"head": 1, "hair": 1, "leye": 1, "reye": 1, "lear": 1, "rear": 1,
                    "lebrow": 1, "rebrow": 1, "nose": 1, "mouth": 1, "torso": 2, "neck": 2,
                    "luarm": 3, "ruarm": 3, "llarm": 4, "rlarm": 4, "lhand": 4, "rhand": 4,
                    "luleg": 5, "ruleg": 5, "llleg": 6, "rlleg": 6, "lfoot": 6, "rfoot": 6}
    assert merged_class == label_maps.PERSON_PART_MERGE
    names = sorted(merged_class)
    expected = {}
    for index, image_id in enumerate(layouts.PERSON_TRAIN + layouts.PERSON_VAL):
        parts, truth = [], np.zeros(shape, np.uint8)
        for k in range(4):  # four parts per image, in disjoint rows
            name = names[(4 * index + k) % len(names)]
            mask = np.zeros(shape, np.uint8)
            mask[6 * k:6 * k + 4, 2:30] = 1
            parts.append((name, mask))
            truth[mask > 0] = merged_class[name]
        dog_mask = np.zeros(shape, np.uint8)
        dog_mask[:, 30:] = 1  # a dog's 'head' must not become a person head
        objects = [("dog", dog_mask, [("head", dog_mask)]),
                   ("person", np.ones(shape, np.uint8), parts)]
        layouts.write_pascal_part_mat(str(manual / "Annotations_Part" / f"{image_id}.mat"), objects)
        expected[image_id] = truth
    builder = build("pascal_person_part/from_parts", manual)
    records = {**layouts.read_split(builder, "train"), **layouts.read_split(builder, "val")}
    assert sorted(records) == sorted(expected)
    for image_id, record in records.items():
        np.testing.assert_array_equal(record["label"], expected[image_id])
    assert sorted(set(np.concatenate([np.unique(t) for t in expected.values()]))) == list(range(7))


def test_from_parts_image_without_person_parts_is_reported(tmp_path, rng, build):
    manual = tmp_path / "manual"
    layouts.write_person_part_release(manual, rng, {})
    shape = (layouts.HEIGHT, layouts.WIDTH)
    for image_id in layouts.PERSON_TRAIN + layouts.PERSON_VAL:
        mask = np.ones(shape, np.uint8)
        parts = [] if image_id == layouts.PERSON_VAL[0] else [("torso", mask)]
        layouts.write_pascal_part_mat(str(manual / "Annotations_Part" / f"{image_id}.mat"),
                                    [("person", mask, parts)])
    builder = build("pascal_person_part/from_parts", manual, skip_bad=True)
    skipped = builder.info.metadata["skipped"]
    assert list(skipped) == ["val"] and "no person part" in skipped["val"]["examples"][0]
    assert os.path.basename(layouts.PERSON_VAL[0]) in skipped["val"]["examples"][0]
