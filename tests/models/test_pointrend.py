"""PointRend: point sampling by hand, uncertainty selection by brute force, adaptive subdivision,
the model's training outputs and the point loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import losses, models
from deeplab_jax.models import pointrend
from deeplab_jax.models.resize import resize_bilinear
from tests.helpers.models import random_variables

TINY_V3PLUS = dict(widths=(4, 4, 8, 8), aspp_features=8, decoder_features=8,
                   decoder_low_level_features=4, pointrend=True, pointrend_points=24,
                   pointrend_subdivision_points=100)


def test_point_sample_hand_values():
    x = jnp.arange(12, dtype=jnp.float32).reshape(1, 3, 4, 1)  # x[r, c] = 4 r + c
    points = jnp.asarray([[[0.5, 1 / 3],  # row 1.0, col 1.0 -> x[1, 1] = 5
                           [0.25, 0.5],  # row 0.5, col 1.5 -> mean of 1, 2, 5, 6 = 3.5
                           [0.0, 0.0], [1.0, 1.0],  # corners 0 and 11
                           [0.1, 0.9]]])  # row 0.2, col 2.7 -> 4 * 0.2 + 2.7 = 3.5
    got = np.asarray(pointrend.point_sample(x, points))[0, :, 0]
    np.testing.assert_allclose(got, [5.0, 3.5, 0.0, 11.0, 3.5], atol=1e-5)
    # Half-pixel convention: u -> u * n - 0.5, clamped at the border.
    got = np.asarray(pointrend.point_sample(x, points, align_corners=False))[0, :, 0]
    # (0.5, 1/3): row 1.0, col 0.8333 -> 4 + 0.8333; (0.25, 0.5): row 0.25, col 1.5 -> 1 + 1.5;
    # (0, 0) -> clamped to x[0, 0]; (1, 1) -> x[2, 3]; (0.1, 0.9): row 0 (clamped), col 3 (3.1).
    np.testing.assert_allclose(got, [4 + 5 / 6, 2.5, 0.0, 11.0, 3.0], atol=1e-5)


def test_point_sample_on_a_grid_is_bilinear_resizing():
    """Sampling at the points of an aligned (h2, w2) grid equals resize_bilinear to (h2, w2)."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 7, 3)), jnp.float32)
    h2, w2 = 9, 13
    indices = jnp.broadcast_to(jnp.arange(h2 * w2)[None], (2, h2 * w2))
    got = jax.jit(lambda v: pointrend.point_sample(v, pointrend.grid_points(indices, (h2, w2))))(x)
    want = resize_bilinear(x, (h2, w2), align_corners=True).reshape(2, h2 * w2, 3)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    grads = jax.jit(jax.grad(
        lambda v: pointrend.point_sample(v, jnp.full((2, 1, 2), 0.3)).sum()))(x)
    assert float(jnp.sum(grads)) == pytest.approx(2 * 3, rel=1e-5)  # weights sum to 1 per sample
    with pytest.raises(ValueError, match="points must be"):
        pointrend.point_sample(x, jnp.zeros((2, 4, 3)))


def test_sample_labels_nearest_by_hand():
    labels = jnp.asarray([[[0, 1, 2], [3, 4, 5]]], jnp.int32)  # H = 2, W = 3
    points = jnp.asarray([[[0.0, 0.0], [1.0, 1.0], [0.49, 0.74], [0.51, 0.76], [0.5, 0.25]]])
    # rows u * 1, cols u * 2: (0, 0) (1, 2) (0.49 -> 0, 1.48 -> 1) (0.51 -> 1, 1.52 -> 2)
    # (0.5 -> 1: halves round up, 0.5 -> 1)
    got = np.asarray(pointrend.sample_labels_nearest(labels, points))
    np.testing.assert_array_equal(got, [[0, 5, 1, 5, 4]])


def test_uncertainty_is_minus_the_top_two_gap():
    logits = jnp.asarray([[3.0, 1.0, 0.0], [2.0, 2.0, -1.0], [0.0, 5.0, 4.5]])
    np.testing.assert_allclose(np.asarray(pointrend.uncertainty(logits)), [-2.0, 0.0, -0.5])


def _band_logits(height=17, width=17, classes=3):
    """Two classes crossing at column 8: uncertainty = -|col - 8| / 2 (bilinear in col)."""
    cols = np.arange(width, dtype=np.float64)
    logits = np.zeros((1, height, width, classes))
    logits[..., 0] = (cols - 8) / 4
    logits[..., 1] = -(cols - 8) / 4
    logits[..., 2] = -10.0
    return jnp.asarray(logits, jnp.float32)


def test_select_uncertain_points_picks_the_most_uncertain_candidates():
    coarse = _band_logits()
    candidates = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 60, 2)), jnp.float32)
    chosen = np.asarray(pointrend.select_uncertain_points(coarse, candidates, 15))
    # Brute force: uncertainty of a candidate = -|col coordinate - 8| / 2 with col = u * 16.
    distance = np.abs(np.asarray(candidates)[0, :, 1] * 16 - 8)
    want = np.asarray(candidates)[0, np.argsort(distance)[:15]]
    np.testing.assert_allclose(chosen[0], want, atol=1e-6)


@pytest.mark.parametrize("importance_ratio", [0.75, 0.0, 1.0])
def test_training_points_are_biased_towards_uncertainty(importance_ratio):
    coarse = jnp.concatenate([_band_logits()] * 2)
    rng = jax.random.key(0, impl="rbg")
    points = pointrend.sample_training_points(coarse, rng, 400, 3.0, importance_ratio)
    assert points.shape == (2, 400, 2)
    p = np.asarray(points)
    assert p.min() >= 0.0 and p.max() <= 1.0
    offset = np.abs(p[..., 1] - 0.5)  # distance to the crossing, in units of the width
    num_uncertain = int(importance_ratio * 400)
    # The num_uncertain most uncertain of 1200 uniform candidates are those with the smallest
    # offsets: all within a fraction q = num_uncertain / 1200 of the width around the crossing
    # (checked with a 20% margin for sampling noise); the rest are uniform (1/3 within 1/6).
    if num_uncertain:
        q = num_uncertain / 1200
        assert (offset[:, :num_uncertain] < 0.6 * q).mean() > 0.99
    if num_uncertain < 400:
        assert abs((offset[:, num_uncertain:] < 1 / 6).mean() - 1 / 3) < 0.1
    with pytest.raises(ValueError, match="importance_ratio"):
        pointrend.sample_training_points(coarse, rng, 10, 3.0, 1.5)


def test_subdivision_sizes():
    assert pointrend.subdivision_sizes((33, 33), (129, 129)) == [(65, 65), (129, 129)]
    assert pointrend.subdivision_sizes((9, 5), (129, 65)) == [(17, 9), (33, 17), (65, 33),
                                                              (129, 65)]
    assert pointrend.subdivision_sizes((5, 7), (20, 30)) == [(9, 13), (17, 25), (20, 30)]
    assert pointrend.subdivision_sizes((1, 1), (3, 3)) == [(2, 2), (3, 3)]
    assert pointrend.subdivision_sizes((9, 9), (9, 9)) == []
    with pytest.raises(ValueError, match="larger"):
        pointrend.subdivision_sizes((9, 9), (5, 5))


def test_subdivision_with_an_interpolating_head_is_bilinear_upsampling():
    """A point head that returns the coarse prediction at the point changes nothing: the result is
    the aligned bilinear upsampling, so the grid points, point_sample and resize agree."""
    coarse = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 9, 4)), jnp.float32)
    fine = jnp.zeros((2, 9, 17, 3))
    shapes = []

    def head(fine_points, coarse_points):
        shapes.append(fine_points.shape)
        return coarse_points

    out = jax.jit(lambda c: pointrend.subdivide(c, fine, head, (17, 33), num_points=50))(coarse)
    assert [s[:2] for s in shapes] == [(2, 50), (2, 50)]  # 9x17 then 17x33 grids: 50 points each
    want = resize_bilinear(coarse, (17, 33), align_corners=True)
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-5)
    shapes.clear()
    jax.eval_shape(lambda c: pointrend.subdivide(c, fine, head, (9, 17), num_points=1000), coarse)
    assert shapes == [(2, 9 * 17, 3)]  # never more points than the grid has


def test_subdivision_replaces_the_most_uncertain_points():
    coarse = jnp.asarray(np.random.default_rng(3).normal(size=(1, 5, 5, 3)), jnp.float32)
    sentinel = jnp.asarray([100.0, -100.0, 0.0])

    def head(fine_points, coarse_points):
        return jnp.broadcast_to(sentinel, coarse_points.shape)

    out = np.asarray(jax.jit(lambda c: pointrend.subdivide(c, jnp.zeros((1, 9, 9, 2)), head,
                                                           (9, 9), num_points=12))(coarse))
    upsampled = np.asarray(resize_bilinear(coarse, (9, 9)))[0].reshape(81, 3)
    top2 = np.sort(upsampled, axis=-1)[:, -2:]
    most_uncertain = set(np.argsort(top2[:, 0] - top2[:, 1])[-12:])  # brute force
    replaced = set(np.flatnonzero(out[0].reshape(81, 3)[:, 0] == 100.0))
    assert replaced == most_uncertain
    untouched = sorted(set(range(81)) - replaced)
    np.testing.assert_allclose(out[0].reshape(81, 3)[untouched], upsampled[untouched], atol=1e-5)


@pytest.fixture(scope="module")
def tiny_pointrend_model():
    model = models.get_model("deeplab_v3plus_demo", 5, **TINY_V3PLUS)
    x = jnp.asarray(np.random.default_rng(4).integers(0, 256, size=(2, 33, 33, 3)), jnp.uint8)
    return model, random_variables(model, x), x


def test_pointrend_model_outputs_loss_and_gradients(tiny_pointrend_model):
    model, variables, x = tiny_pointrend_model
    params = variables["params"]
    assert set(params) == {"backbone", "head", "point_head"}
    # fc1 reads the fine features (stride-4 layer2: 4 channels) and the 5 coarse logits.
    assert params["point_head"]["fc1"]["kernel"].shape == (4 + 5, 256)
    assert params["point_head"]["fc2"]["kernel"].shape == (256 + 5, 256)
    assert params["point_head"]["predictor"]["kernel"].shape == (256 + 5, 5)
    images = jax.ShapeDtypeStruct(x.shape, x.dtype)
    assert jax.eval_shape(model.apply, variables, images).shape == (2, 33, 33, 5)  # subdivided
    rngs = {"points": jax.random.key(0, impl="rbg"), "dropout": jax.random.key(1, impl="rbg")}
    coarse, _ = jax.eval_shape(functools.partial(
        model.apply, train=True, mutable=["batch_stats"], rngs=rngs), variables, images)
    assert coarse.shape == (2, 9, 9, 5)  # train=True without return_points: coarse, stride 4
    labels = jnp.asarray(np.random.default_rng(5).integers(0, 5, size=(2, 33, 33)), jnp.int32)

    def loss_fn(params):
        outputs, _ = model.apply({**variables, "params": params}, x, train=True,
                                 return_points=True, mutable=["batch_stats"], rngs=rngs)
        # The point logits recomputed from the parts: the point head on the stride-4 features
        # and the coarse logits, both sampled at the returned points.
        (_, endpoints), _ = model.backbone.apply(
            {"params": params["backbone"], "batch_stats": variables["batch_stats"]["backbone"]},
            models.normalize_images(x, model.input_norm), train=True, return_endpoints=True,
            mutable=["batch_stats"])
        fine = pointrend.point_sample(endpoints["layer2"], outputs["points"])
        recomputed = model.point_head.apply(
            {"params": params["point_head"]}, fine,
            pointrend.point_sample(outputs["logits"], outputs["points"]))
        return losses.pointrend_loss(outputs, labels), (outputs, recomputed)

    (loss, (outputs, recomputed)), grads = jax.jit(
        jax.value_and_grad(loss_fn, has_aux=True))(params)
    assert outputs["logits"].shape == (2, 9, 9, 5)
    assert outputs["point_logits"].shape == (2, 24, 5)
    assert outputs["points"].shape == (2, 24, 2)
    np.testing.assert_allclose(np.asarray(outputs["point_logits"]), np.asarray(recomputed),
                               rtol=1e-4, atol=1e-4)
    assert np.isfinite(float(loss))
    for part in ("point_head", "head", "backbone"):  # the point loss reaches every part
        norm = sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads[part]))
        assert norm > 0, part


def test_pointrend_errors(tiny_pointrend_model):
    model, variables, x = tiny_pointrend_model
    plain = models.get_model("deeplab_v3plus_demo", 5, **{**TINY_V3PLUS, "pointrend": False})
    with pytest.raises(ValueError, match="pointrend=True"):
        plain.apply({"params": {k: v for k, v in variables["params"].items()
                                if k != "point_head"},
                     "batch_stats": variables["batch_stats"]}, x, return_points=True)
    msc = models.get_model("deeplab_v3plus_demo", 5, msc_scales=(1.0, 0.5), **TINY_V3PLUS)
    with pytest.raises(ValueError, match="msc_scales"):
        msc.apply(variables, x, return_points=True, rngs={"points": jax.random.key(0)})
    with pytest.raises(ValueError, match="return_points=True"):
        losses.pointrend_loss({"logits": jnp.zeros((1, 3, 3, 2))}, jnp.zeros((1, 9, 9)))


def test_point_loss_by_hand():
    labels = jnp.asarray([[[0, 1, 255], [2, 1, 0]]], jnp.int32)  # H = 2, W = 3
    points = jnp.asarray([[[0.0, 0.0], [0.0, 1.0], [1.0, 0.5], [1.0, 0.0]]])  # labels 0 255 1 2
    logits = jnp.asarray([[[2.0, 0.0, 0.0], [0.0, 0.0, 9.0], [1.0, 3.0, 0.0], [0.0, 0.0, 0.0]]])
    got = float(losses.point_loss(logits, points, labels))

    def nll(row, label):
        return np.log(np.exp(row).sum()) - row[label]

    want = np.mean([nll(np.array([2.0, 0, 0]), 0), nll(np.array([1.0, 3, 0]), 1),
                    nll(np.zeros(3), 2)])  # the point on 255 does not count
    assert got == pytest.approx(want, rel=1e-5)
