"""The demo data set (what makes it a real segmentation problem) and the input pipeline."""

import cv2
import numpy as np
import pytest

from deeplab_jax.data import demo_shapes, input_pipeline
from deeplab_jax.data.augment import EvalPad, TrainAugment


@pytest.fixture(scope="module")
def sample():
    return [demo_shapes.generate_example(0, "train", i) for i in range(120)]


def test_generation_is_deterministic_and_splits_differ():
    a = demo_shapes.generate_example(0, "train", 5)
    b = demo_shapes.generate_example(0, "train", 5)
    c = demo_shapes.generate_example(0, "val", 5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].dtype == np.uint8 and a[0].shape == (129, 129, 3) and a[1].shape == (129, 129)


def test_every_class_appears_and_labels_are_valid(sample):
    labels = np.stack([lb for _, lb in sample])
    values = set(np.unique(labels).tolist())
    assert values <= set(range(demo_shapes.NUM_CLASSES)) | {255}
    assert values >= set(range(demo_shapes.NUM_CLASSES)) | {255}


def test_ignore_band_separates_every_pair_of_classes(sample):
    for _, label in sample:
        for a, b in ((label[:, 1:], label[:, :-1]), (label[1:], label[:-1])):
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any(), "two classes touch without the 255 band between them"


def test_colour_does_not_predict_the_class(sample):
    """A nearest-mean-colour classifier on object pixels is near chance (1/7)."""
    def pixels(examples):
        images = np.stack([im for im, _ in examples]).reshape(-1, 3).astype(np.float32)
        labels = np.stack([lb for _, lb in examples]).reshape(-1)
        keep = (labels > 0) & (labels < 255)
        return images[keep], labels[keep]

    train_x, train_y = pixels(sample[:60])
    test_x, test_y = pixels(sample[60:])
    means = np.stack([train_x[train_y == k].mean(0) for k in range(1, 8)])
    predicted = 1 + np.argmin(((test_x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (predicted == test_y).mean() < 0.3


def test_object_scales_span_4x_and_bars_are_thin(sample):
    disc_diameters, bar_half_widths = [], []
    for _, label in sample:
        for cls, store in ((1, disc_diameters), (6, bar_half_widths)):
            count, components, stats, _ = cv2.connectedComponentsWithStats(
                (label == cls).astype(np.uint8), connectivity=4)
            for c in range(1, count):
                if stats[c, cv2.CC_STAT_AREA] < 40:
                    continue
                region = (components == c).astype(np.uint8)
                if cls == 1:
                    store.append(max(stats[c, cv2.CC_STAT_WIDTH], stats[c, cv2.CC_STAT_HEIGHT]))
                else:
                    store.append(cv2.distanceTransform(region, cv2.DIST_L2, 3).max())
    assert max(disc_diameters) / min(disc_diameters) >= 3.5
    assert np.median(bar_half_widths) <= 5.0  # bars (labelled part) at most ~9 px wide


def test_train_augment_keeps_image_and_label_aligned():
    # The image encodes the label in its red channel, so misalignment would show.
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, (4, 5)).astype(np.uint8)  # 20x20 blocks after the resize
    label = cv2.resize(label, (100, 80), interpolation=cv2.INTER_NEAREST)
    image = np.stack([label * 40, label * 0, label * 0], -1).astype(np.uint8)
    augment = TrainAugment(crop_size=(65, 65), scale_range=(0.5, 1.5), pad_value=(250, 0, 0))
    for seed in range(20):
        out = augment.random_map({"image": image, "label": label}, np.random.default_rng(seed))
        assert out["image"].shape == (65, 65, 3) and out["label"].shape == (65, 65)
        real = out["label"] != 255
        # Nearest-resized labels vs bilinear-resized image: equal away from label edges.
        kernel = np.ones((3, 3), np.uint8)
        flat = (cv2.dilate(out["label"], kernel) == cv2.erode(out["label"], kernel)) & real
        interior = cv2.erode(flat.astype(np.uint8), kernel).astype(bool)
        assert interior.sum() > 100
        np.testing.assert_array_equal(out["image"][..., 0][interior], out["label"][interior] * 40)
        assert np.all(out["image"][~real] == (250, 0, 0))


def test_eval_pad_and_errors():
    pad = EvalPad(size=(8, 10))
    out = pad.map({"image": np.ones((5, 7, 3), np.uint8), "label": np.zeros((5, 7), np.uint8),
                   "image_id": "x"})
    assert out["mask"].sum() == 35 and out["mask"][:5, :7].all()
    assert np.all(out["label"][5:] == 255) and out["height"] == 5 and out["width"] == 7
    with pytest.raises(ValueError, match="larger than the eval size"):
        pad.map({"image": np.ones((9, 7, 3), np.uint8), "label": np.zeros((9, 7), np.uint8),
                 "image_id": "big"})


def test_eval_batches_cover_every_example_once():
    source = [{"image": np.full((4, 4, 3), i, np.uint8), "label": np.zeros((4, 4), np.uint8),
               "image_id": str(i)} for i in range(19)]
    batches = list(input_pipeline.eval_batches(source, global_batch_size=8, size=(4, 4)))
    assert len(batches) == 3
    ids = [i for b in batches for i, h in zip(b["image_id"], b["height"]) if h > 0]
    assert ids == [str(i) for i in range(19)]
    assert batches[-1]["mask"][3:].sum() == 0


def test_train_stream_resumes_from_its_state():
    source = [{"image": np.full((6, 6, 3), i, np.uint8), "label": np.zeros((6, 6), np.uint8),
               "image_id": str(i)} for i in range(10)]
    dataset = input_pipeline.create_train_dataset(source, global_batch_size=8, crop_size=(4, 4),
                                                  seed=3)
    straight = iter(dataset)
    expected = [next(straight)["image"] for _ in range(4)]
    first = iter(dataset)
    for _ in range(2):
        next(first)
    resumed = iter(dataset)
    resumed.set_state(first.get_state())
    for want in expected[2:]:
        np.testing.assert_array_equal(next(resumed)["image"], want)
