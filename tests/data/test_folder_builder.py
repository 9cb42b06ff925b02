"""folder_segmentation: images/ + masks/ + classes.txt, list files or a seeded split."""

import os

import numpy as np
import pytest
from PIL import Image

from deeplab_jax.data import datasets, sources
from deeplab_jax.data.builders import folder_layout
from deeplab_jax.data.builders.validation import BadExampleError
from tests.helpers import official_layouts as layouts

CLASSES = ("background", "crack", "rust", "paint")


def _write_folder(root, rng, count=6):
    os.makedirs(root / "images")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    truth = {}
    for index in range(count):
        stem = f"part_{index:02d}"
        label = layouts.random_label(rng, len(CLASSES), border=index % 2 == 0)
        if index % 3 == 0:  # palette mask
            layouts.write_palette_png(str(root / "masks" / f"{stem}.png"), label)
        else:  # greyscale mask
            layouts.write_gray_png(str(root / "masks" / f"{stem}.png"), label)
        if index == 1:  # RGBA PNG image: stored re-encoded as RGB
            rgba = rng.integers(0, 256, (layouts.HEIGHT, layouts.WIDTH, 4), np.uint8)
            Image.fromarray(rgba, "RGBA").save(root / "images" / f"{stem}.png")
            image = rgba[..., :3]
        elif index == 2:
            image = layouts.write_rgb_png(str(root / "images" / f"{stem}.png"), rng)
        else:
            layouts.write_jpeg(str(root / "images" / f"{stem}.jpg"), rng)
            image = layouts.decode_file_rgb(str(root / "images" / f"{stem}.jpg"))
        truth[stem] = (image, label)
    return truth


def test_seeded_split_round_trip_and_descriptor(tmp_path, rng):
    root = tmp_path / "my_parts"
    truth = _write_folder(root, rng)
    descriptor = datasets.get_dataset("folder", str(root))
    assert descriptor.class_names == CLASSES and descriptor.num_classes == 4
    assert descriptor.splits == {"train": 5, "val": 1}
    assert descriptor.eval_size == (25, 33)  # 24x32 rounded up to 8k + 1
    config_name = folder_layout.folder_config_name(str(root))
    assert descriptor.tfds_name == f"folder_segmentation/{config_name}"
    train = sources.load_split(descriptor, "train", str(tmp_path / "tfds"), str(root))
    val = sources.load_split(descriptor, "val", str(tmp_path / "tfds"), str(root))
    records = {r["image_id"]: r for r in [train[i] for i in range(len(train))]
               + [val[i] for i in range(len(val))]}
    assert sorted(records) == sorted(truth) and len(train) == 5 and len(val) == 1
    for stem, (image, label) in truth.items():
        np.testing.assert_array_equal(records[stem]["image"], image)
        np.testing.assert_array_equal(records[stem]["label"], label)
    # The same seed gives the same split; a different folder gets a different config name.
    again = folder_layout.split_stems(str(root), list(truth), 0.1, 0)
    assert again["val"] == [val[0]["image_id"]]
    assert folder_layout.folder_config_name(str(root)) != folder_layout.folder_config_name(
        str(tmp_path / "x"))


def test_list_files_and_bad_inputs(tmp_path, rng, build):
    root = tmp_path / "data"
    truth = _write_folder(root, rng)
    stems = sorted(truth)
    (root / "train.txt").write_text("\n".join(stems[:4] + ["ghost"]) + "\n")
    (root / "val.txt").write_text("\n".join(stems[4:]) + "\n")
    name = f"folder_segmentation/{folder_layout.folder_config_name(str(root))}"
    with pytest.raises(BadExampleError, match="ghost.*no image with this stem"):
        build(name, root)
    label = truth[stems[5]][1].copy()
    label[0, 0] = len(CLASSES)  # class 4 of a 4-class set
    layouts.write_gray_png(str(root / "masks" / f"{stems[5]}.png"), label)
    builder = build(name, root, skip_bad=True)
    skipped = builder.info.metadata["skipped"]
    assert skipped["train"]["count"] == 1 and "ghost" in skipped["train"]["examples"][0]
    assert skipped["val"]["count"] == 1 and "label values [4] outside [0, 4)" in \
        skipped["val"]["examples"][0]
    assert builder.info.metadata["class_names"] == list(CLASSES)


def test_missing_pieces_are_named(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(sources.DataNotFoundError, match="classes.txt"):
        datasets.get_dataset("folder", str(root))
    (root / "classes.txt").write_text("a\nb\n")
    with pytest.raises(sources.DataNotFoundError, match="images/"):
        datasets.get_dataset("folder", str(root))
    with pytest.raises(ValueError, match="manual_dir"):
        datasets.get_dataset("folder")


def test_undecodable_image_is_named_or_skipped(tmp_path, rng):
    """Random bytes named .jpg: the descriptor's size scan passes over it; the build names it, or
    skips and records it with skip_bad."""
    root = tmp_path / "data"
    _write_folder(root, rng)
    bad = root / "images" / "part_99.jpg"
    bad.write_bytes(rng.integers(0, 256, 500, np.uint8).tobytes())
    layouts.write_gray_png(str(root / "masks" / "part_99.png"),
                           np.zeros((layouts.HEIGHT, layouts.WIDTH), np.uint8))
    (root / "train.txt").write_text("part_00\npart_01\npart_99\n")
    (root / "val.txt").write_text("part_02\n")
    descriptor = datasets.get_dataset("folder", str(root))
    assert descriptor.splits == {"train": 3, "val": 1} and descriptor.eval_size == (25, 33)
    with pytest.raises(BadExampleError, match="corrupt or unsupported image") as error:
        sources.load_split(descriptor, "train", str(tmp_path / "a"), str(root))
    assert error.value.path == str(bad) and "skip_bad=True" in str(error.value)
    train = sources.load_split(descriptor, "train", str(tmp_path / "b"), str(root), skip_bad=True)
    assert len(train) == 2
    skipped = sources.skipped_examples(sources.prepare(descriptor, str(tmp_path / "b")))
    assert skipped["train"]["count"] == 1
    assert skipped["train"]["examples"][0].startswith(f"part_99 ({bad}): ")
