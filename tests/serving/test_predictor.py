"""The predictor's files: 16-bit input, subfolders kept, name clashes, class probabilities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from deeplab_jax import models, predict
from deeplab_jax.data import palettes
from deeplab_jax.inference import predict_logits
from deeplab_jax.serving.predictor import (
    Predictor,
    list_images,
    output_names,
    read_rgb,
    segment_files,
)

from tests.helpers.weights_reference import photograph


def _demo_model_and_variables():
    """deeplab_v2_demo (4 classes) with random weights and BatchNorm statistics."""
    model = models.get_model("deeplab_v2_demo", 4)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 33, 33, 3))))
    rng = np.random.default_rng(1)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, leaf: (np.abs(rng.normal(size=leaf.shape)) + 0.5 if "var" in str(path[-1])
                            else 0.3 * rng.normal(size=leaf.shape)).astype(np.float32), shapes)
    return model, variables


@pytest.fixture(scope="module")
def predictor():
    return Predictor(*_demo_model_and_variables())


def test_sixteen_bit_grayscale_is_scaled_not_saturated(tmp_path, predictor):
    gray8 = photograph(40)[..., 1]
    gray16 = gray8.astype(np.uint16) * 257  # the same picture with 16 bits per pixel
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    Image.fromarray(gray8).save(tmp_path / "g8.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    rgb16, rgb8 = read_rgb(tmp_path / "g16.png"), read_rgb(tmp_path / "g8.png")
    assert rgb16.dtype == np.uint8 and rgb16.shape == (40, 40, 3)
    np.testing.assert_array_equal(rgb16, rgb8)
    assert (rgb16 == 255).mean() < 0.05  # clipping at 255 made 99.6% of pixels white
    np.testing.assert_array_equal(predictor.labels(rgb16), predictor.labels(rgb8))
    odd = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 41)  # not multiples of 257
    Image.fromarray(odd).save(tmp_path / "odd.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "odd.png")[..., 0],
                                  np.round(odd / 257).astype(np.uint8))


def test_float_images_are_refused_with_a_message(tmp_path):
    Image.fromarray(np.ones((8, 8), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match="8 or 16 bits"):
        read_rgb(tmp_path / "f.tif")


def test_subfolders_are_kept_and_names_never_collide(tmp_path, predictor):
    images = tmp_path / "in"
    for folder in ("a", "b", "b/deeper"):
        (images / folder).mkdir(parents=True)
    picture = photograph(30)
    for name in ("a/x.jpg", "b/x.jpg", "b/deeper/y.png", "b/y.jpg", "b/y.png"):
        Image.fromarray(picture).save(images / name)
    files = list_images(images)
    assert [name for _, name in files] == ["a/x.jpg", "b/deeper/y.png", "b/x.jpg", "b/y.jpg",
                                           "b/y.png"]
    assert output_names([name for _, name in files]) == [
        "a/x", "b/deeper/y", "b/x", "b/y.jpg", "b/y.png"]
    failures = segment_files(predictor, files, tmp_path / "out", palettes.voc_palette(),
                             progress=False, probabilities=True)
    assert failures == []
    for (path, _), name in zip(files, ("a/x", "b/deeper/y", "b/x", "b/y.jpg", "b/y.png")):
        label = Image.open(tmp_path / "out" / f"{name}.png")
        assert label.mode == "P" and label.size == (30, 30)
        assert (tmp_path / "out" / f"{name}_overlay.jpg").exists()
        probs = np.load(tmp_path / "out" / f"{name}_probs.npy")
        assert probs.dtype == np.float16 and probs.shape == (30, 30, 4)
        np.testing.assert_allclose(probs.astype(np.float32).sum(-1), 1.0, atol=5e-3)
        np.testing.assert_array_equal(np.asarray(label), predictor.labels(read_rgb(path)))


def test_files_that_are_not_images_are_named_in_a_warning(tmp_path, caplog):
    images = tmp_path / "in"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(photograph(20)).save(images / "a.JPG")
    Image.fromarray(photograph(20)).save(images / "sub" / "b.gif")
    (images / "notes.txt").write_text("not an image")
    with caplog.at_level("WARNING", logger="absl"):
        files = list_images(images)
    assert [name for _, name in files] == ["a.JPG"]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "skipped 2 file(s)" in skipped[0], skipped
    assert "notes.txt, sub/b.gif" in skipped[0] and ".webp" in skipped[0]
    caplog.clear()
    (images / "notes.txt").unlink()
    (images / "sub" / "b.gif").unlink()
    with caplog.at_level("WARNING", logger="absl"):
        list_images(images)
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]


def test_predictor_serves_the_prepared_model_with_the_same_scores(predictor):
    """The predictor folds BatchNorm (inference.prepare); its scores are the model's as built."""
    model, variables = _demo_model_and_variables()
    assert "batch_stats" in variables and "batch_stats" not in predictor.variables
    images = jnp.asarray(photograph(65)[None])  # a bucket size: the predictor pads nothing
    built = predict_logits(model, variables, images.astype(jnp.float32), predictor.options)
    served = predictor._logits(predictor.variables, images)
    assert float(jnp.linalg.norm(served - built) / jnp.linalg.norm(built)) <= 1e-4
    np.testing.assert_array_equal(predictor.labels(np.asarray(images[0])),
                                  np.asarray(jnp.argmax(built[0], -1)))


@pytest.mark.parametrize("method", ["separable", "permutohedral"])
def test_predict_command_takes_the_crf_method(method):
    _, params, chosen = predict.test_time(None, crf=True, crf_method=method)
    assert chosen == method and params is not None
    assert predict.test_time(None, crf=True)[2] == "meanfield"
