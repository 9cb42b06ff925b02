"""The coarse-to-fine CRF parameter search (paper §4.1.1) on scenes where the answer is known."""

import subprocess
import sys

import numpy as np
import pytest

from deeplab_jax.crf import CRFParams, dense_crf
from deeplab_jax.evaluation import crf_search
from deeplab_jax.evaluation.metrics import confusion_matrix_numpy as confusion_matrix
from deeplab_jax.evaluation.metrics import iou_from_confusion


def _scene(seed, height=32, width=40):
    """Three colour regions, probabilities that are right on average but noisy per pixel."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:height, :width]
    labels = np.zeros((height, width), np.int32)
    labels[(ys - height / 2) ** 2 + (xs - width / 3) ** 2 < 80] = 1
    labels[(np.abs(ys - height / 3) < 5) & (np.abs(xs - 3 * width / 4) < 7)] = 2
    colours = np.array([[40, 120, 40], [200, 60, 60], [60, 60, 200]])
    image = np.clip(colours[labels] + rng.normal(0, 4, (height, width, 3)), 0, 255)
    logits = 2.0 * np.eye(3)[labels] + rng.normal(0, 1.6, (height, width, 3))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return image.astype(np.uint8), probs.astype(np.float32), labels


GRID = {"bi_w": (0.1, 5.0), "bi_xy_std": (20.0,), "bi_rgb_std": (3.0, 100.0), "pos_w": (3.0,),
        "pos_xy_std": (1.0,)}


@pytest.fixture(scope="module")
def result():
    # Two sizes (two compilations) and a batch that needs padding (3 images, batch 2).
    scenes = [_scene(0), _scene(1), _scene(2), _scene(3, 28, 36)]
    images, probs, labels = zip(*scenes)
    return scenes, crf_search.search(images, probs, labels, 3, coarse_grid=GRID, refine=True,
                               batch_size=2, progress=False)


def test_search_finds_the_known_best(result):
    _, found = result
    coarse = {(p.bi_w, p.bi_rgb_std): score for p, score in found.rows[:4]}
    # A strong weight with an edge-respecting colour std wins; the weak weight or a colour std
    # that ignores the region colours (differences ~100 levels) does worse.
    assert coarse[(5.0, 3.0)] > max(coarse[(0.1, 3.0)], coarse[(5.0, 100.0)], coarse[(0.1, 100.0)])
    assert found.best_miou >= coarse[(5.0, 3.0)] > found.baseline_miou + 0.2
    assert found.best.bi_w in (4.5, 5.0, 5.5) and found.best.bi_rgb_std in (2.5, 3.0, 3.5)


def test_refinement_explores_around_the_coarse_best(result):
    _, found = result
    refined = [p for p, _ in found.rows[4:]]
    assert {p.bi_w for p in refined} == {4.5, 5.0, 5.5}
    assert {p.bi_xy_std for p in refined} == {15.0, 20.0, 25.0}
    assert {p.bi_rgb_std for p in refined} == {2.5, 3.0, 3.5}
    assert len(refined) == 27 - 1  # the coarse best is not evaluated twice
    assert len(found.table().splitlines()) == len(found.rows) + 1


def test_search_rows_are_the_crf_results(result):
    """A row's mIoU equals the mIoU of dense_crf's labels at those parameters (the search runs the
    same mean-field with traced standard deviations; 1-ulp feature differences may move a pixel)."""
    scenes, found = result
    params = CRFParams(bi_w=5.0, bi_xy_std=20.0, bi_rgb_std=3.0)
    total = 0
    for image, probs, labels in scenes:
        q = dense_crf(image, probs, params)
        total = total + np.asarray(confusion_matrix(labels, np.argmax(q, -1), 3))
    row = dict(found.rows)[params]
    assert row == pytest.approx(iou_from_confusion(total)["miou"], abs=5e-3)


def test_padding_to_shared_sizes_keeps_the_scores(result):
    """pad+mask: both sizes padded to 32x48 share one batch; masked padding takes no part in the
    CRF, so the scores match the unpadded search (up to lattice vertices the padding adds)."""
    scenes, found = result
    images, probs, labels = zip(*scenes)
    padded = crf_search.search(images, probs, labels, 3, coarse_grid=GRID, refine=False,
                               batch_size=4, progress=False, pad_multiple=16)
    unpadded = dict(found.rows)
    for params, score in padded.rows:
        assert score == pytest.approx(unpadded[params], abs=0.01)
    assert padded.best == found.rows[int(np.argmax([s for _, s in found.rows[:4]]))][0]


def test_refine_grid_and_bad_inputs():
    grid = crf_search.refine_grid(
        CRFParams(bi_w=3.0, bi_xy_std=30.0, bi_rgb_std=3.0, pos_xy_std=3.0))
    assert grid["bi_w"] == (2.5, 3.0, 3.5) and grid["bi_xy_std"] == (25.0, 30.0, 35.0)
    assert grid["pos_w"] == (3.0,) and grid["pos_xy_std"] == (3.0,)
    image, probs, labels = _scene(0)
    with pytest.raises(ValueError, match="equal length"):
        crf_search.search([image], [probs, probs], [labels], 3)
    with pytest.raises(ValueError, match="num_classes"):
        crf_search.search([image], [probs], [labels], 4)
    with pytest.raises(ValueError, match="lacks"):
        crf_search.search([image], [probs], [labels], 3, coarse_grid={"bi_w": (4.0,)})


def test_cli_defines_the_documented_flags():
    out = subprocess.run([sys.executable, "-m", "deeplab_jax.crf.tune", "--helpfull"],
                         capture_output=True, text=True)
    assert out.returncode in (0, 1), out.stderr  # absl exits 1 after printing help
    for flag in ("--config", "--workdir", "--num_images", "--output", "--method"):
        assert flag in out.stdout


def test_separable_engine_scores_the_separable_crf(result):
    """Engine(method="separable"): each row is the mIoU of dense_crf(method="separable") labels,
    and on these scenes it ranks the coarse grid as the lattice mean-field does."""
    scenes, found = result
    images, probs, labels = zip(*scenes)
    engine = crf_search.Engine(method="separable")
    fast = crf_search.search(images, probs, labels, 3, coarse_grid=GRID, refine=False,
                             batch_size=2, progress=False, engine=engine)
    params = CRFParams(bi_w=5.0, bi_xy_std=20.0, bi_rgb_std=3.0)
    total = 0
    for image, prob, label in scenes:
        q = dense_crf(image, prob, params, method="separable")
        total = total + np.asarray(confusion_matrix(label, np.argmax(q, -1), 3))
    assert dict(fast.rows)[params] == pytest.approx(iou_from_confusion(total)["miou"], abs=5e-3)
    assert fast.best == max(found.rows[:4], key=lambda row: row[1])[0]
    with pytest.raises(ValueError, match="method"):
        crf_search.search(images, probs, labels, 3, engine=crf_search.Engine(method="exact"))
