"""The Evaluator's maths through a fixed model, and trimap accuracy by hand."""

import numpy as np
import pytest

from deeplab_jax.config import base_config
from deeplab_jax.data.datasets import DatasetDescriptor
from deeplab_jax.evaluation import trimap
from deeplab_jax.evaluation.evaluator import EvalSettings, Evaluator
from deeplab_jax.inference import predict_logits
from deeplab_jax.parallel import mesh as mesh_lib
from tests.helpers.fixed_models import RedChannelClassifier
from tests.helpers.models import batchnorm_model, images, relative_error


def test_trimap_counts_by_hand():
    label = np.zeros((5, 8), np.uint8)
    label[:, 4:] = 1  # a vertical boundary between columns 3 and 4
    prediction = label.copy()
    prediction[2, 3] = 1  # wrong, next to the boundary
    prediction[2, 0] = 1  # wrong, 3-4 px away
    correct, total = trimap.trimap_counts(prediction, label, widths=(0, 1, 3, 10))
    # Boundary pixels: columns 3 and 4 (distance 0); column 2 and 5 at distance 1; 0 and 7 at 3.
    np.testing.assert_array_equal(total, [10, 20, 40, 40])
    np.testing.assert_array_equal(correct, [9, 19, 38, 38])
    void = label.copy()
    void[:, 4] = 255  # VOC's void band counts as boundary, and is never scored
    correct, total = trimap.trimap_counts(label, void, widths=(0, 1))
    np.testing.assert_array_equal(total, [0, 10])


def test_evaluator_confusion_through_a_fixed_model(num_devices):
    """Padding, filler examples and 255 pixels excluded; counts equal the hand count."""
    k = 3
    descriptor = DatasetDescriptor(
        name="fake", tfds_name="fake", num_classes=k, class_names=("a", "b", "c"),
        splits={"train": 1, "val": 10}, train_split="train", eval_split="val",
        crop_size=(8, 8), eval_size=(8, 10), palette=np.zeros((256, 3), np.uint8))
    config = base_config()
    config.eval.batch_size = 8
    config.eval.trimap_widths = (1, 100)
    rng = np.random.default_rng(3)
    source, expected = [], np.zeros((k, k), np.int64)
    for i in range(10):
        h, w = int(rng.integers(3, 9)), int(rng.integers(3, 11))
        image = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
        label = rng.integers(0, k, (h, w)).astype(np.uint8)
        label[0, 0] = 255
        source.append({"image": image, "label": label, "image_id": str(i)})
        prediction = image[..., 0].astype(np.int64) % k
        keep = label != 255
        np.add.at(expected, (label[keep], prediction[keep]), 1)
    evaluator = Evaluator(RedChannelClassifier(k), mesh_lib.create_mesh(), descriptor,
                          EvalSettings.from_config(config, descriptor))
    results = evaluator.evaluate({}, source)
    np.testing.assert_array_equal(results["confusion"], expected)
    assert results["pixel_accuracy"] == pytest.approx(np.trace(expected) / expected.sum())
    # With a band wider than any image, the trimap covers every labelled pixel.
    assert results["trimap_accuracy"][-1] == pytest.approx(results["pixel_accuracy"])


def test_evaluator_scores_are_the_models_as_built_with_batchnorm_folded():
    """The evaluator folds BatchNorm (inference.prepare) inside its compiled function: same scores
    as the model applied to the trained variables."""
    descriptor = DatasetDescriptor(
        name="fake", tfds_name="fake", num_classes=4, class_names=("a", "b", "c", "d"),
        splits={"train": 1, "val": 1}, train_split="train", eval_split="val",
        crop_size=(33, 33), eval_size=(33, 33), palette=np.zeros((256, 3), np.uint8))
    config = base_config()
    config.eval.batch_size = 8
    model, variables = batchnorm_model("deeplab_v2_demo", {}, num_classes=4)
    evaluator = Evaluator(model, mesh_lib.create_mesh(), descriptor,
                          EvalSettings.from_config(config, descriptor))
    batch = images(batch=8)
    expected = predict_logits(model, variables, batch, evaluator.settings.options)
    served = evaluator.logits(variables, batch)
    assert relative_error(served, expected) <= 1e-4
