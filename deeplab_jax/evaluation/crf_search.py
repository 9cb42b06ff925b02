"""The paper's coarse-to-fine search of the CRF parameters (DeepLab-v2 §4.1.1).

"We use default values of w2 = 3 and sigma_gamma = 3 and we search for the best values of w1,
sigma_alpha, and sigma_beta by cross-validation on 100 images from val. The initial search range
of the parameters are w1 in [3:6], sigma_alpha in [30:10:100] and sigma_beta in [3:6] (MATLAB
notation), and then we refine the search step sizes around the first round's best values."

`search` takes validation data already in memory and returns every (parameters, mIoU) row and the
best parameters. It runs a jitted CRF (`Engine`: the lattice mean-field `deeplab_jax.crf.meanfield`,
or the separable `deeplab_jax.crf.separable`, 7x faster on a CPU at 129x129) batched on the
default device: images of one size are stacked (the last batch padded and masked), the standard
deviations of a whole grid are traced values (one compilation per image size and theta_gamma), the
lattice or the separable filter's weights are built once per (image, sigma_alpha, sigma_beta) and
the weights w1, w2 are vmapped.

The command line (`python -m deeplab_jax.crf.tune`) feeds it a trained model's validation
probabilities.
"""

import collections
import dataclasses
import functools
import itertools
import math
import typing

import jax
import jax.numpy as jnp
import numpy as np

from deeplab_jax.crf import meanfield, separable
from deeplab_jax.evaluation import metrics
from deeplab_jax.crf.params import PAPER_COARSE_GRID, CRFParams, register_pytree

register_pytree()
GRID_FIELDS = ("bi_w", "bi_xy_std", "bi_rgb_std", "pos_w", "pos_xy_std")
# Refinement (second round) step per field: half the paper's coarse step.
REFINE_STEPS = {"bi_w": 0.5, "bi_xy_std": 5.0, "bi_rgb_std": 0.5, "pos_w": 0.0, "pos_xy_std": 0.0}


def _scoring():
    """(confusion_matrix, miou) of the project's metrics: jittable counts, host mIoU."""

    def confusion_matrix(labels, predictions, num_classes, ignore_label):
        return metrics.confusion_matrix(labels, predictions, num_classes,
                                        ignore_label=ignore_label)

    def miou(confusion_KxK):
        return metrics.iou_from_confusion(np.asarray(jax.device_get(confusion_KxK)))["miou"]

    return confusion_matrix, miou


@dataclasses.dataclass(frozen=True)
class Engine:
    """Which CRF computes the search's rows, and its settings (static, hashable).

    method: "meanfield" (the permutohedral lattice in JAX, 99.8% labels equal to the exact CRF) or
      "separable" (dense products, ~98% labels; on a CPU 7x faster on 129x129 images, 1.1-1.5x
      at VOC size; its best parameters differ from the exact CRF's: benchmarks/README.md).
    capacity_factor: meanfield: lattice vertices reserved per pixel (images that need more are
      recomputed with the worst-case capacity).
    separable_options: separable: `deeplab_jax.crf.separable.SeparableOptions`.
    """

    method: str = "meanfield"
    capacity_factor: float = 2.0
    separable_options: separable.SeparableOptions = separable.SeparableOptions()

    def validate(self):
        if self.method not in ("meanfield", "separable"):
            raise ValueError(f"Engine.method must be 'meanfield' or 'separable', got "
                             f"{self.method!r}")
        self.separable_options.validate()
        return self


@dataclasses.dataclass
class SearchResult:
    rows: list  # [(CRFParams, mIoU)] in evaluation order
    best: CRFParams
    best_miou: float
    baseline_miou: float  # argmax of the probabilities, no CRF

    def table(self):
        """Tab-separated table, best first."""
        lines = ["\t".join(GRID_FIELDS + ("iterations", "miou"))]
        for params, score in sorted(self.rows, key=lambda row: -row[1]):
            values = [f"{getattr(params, f):g}" for f in GRID_FIELDS]
            lines.append("\t".join(values + [str(params.iterations), f"{score:.6f}"]))
        return "\n".join(lines) + "\n"


def refine_grid(best: CRFParams, steps=None):
    """The second round: each searched value +- one refinement step around the first's best."""
    steps = dict(REFINE_STEPS, **(steps or {}))
    grid = {}
    for field in GRID_FIELDS:
        centre, step = float(getattr(best, field)), float(steps[field])
        values = [centre] if step == 0 else [centre - step, centre, centre + step]
        grid[field] = tuple(v for v in values if v > 0)
    return grid


def search(images, probs, labels, num_classes, ignore_label=255, coarse_grid=None, refine=True,
           iterations=10, batch_size=4, progress=True, engine=Engine(), refine_steps=None,
           pad_multiple=None):
    """Grid search of the CRF parameters by validation mIoU.

    Args:
      images: uint8 [N, H, W, 3] array or a list of [H, W, 3] arrays (sizes may differ).
      probs: matching float probabilities [H, W, K] (list or array).
      labels: matching integer label maps [H, W] (`ignore_label` pixels are not scored).
      num_classes: K.
      coarse_grid: dict field -> values for GRID_FIELDS (default: the paper's, PAPER_COARSE_GRID).
      refine: run the second, finer round around the first round's best.
      batch_size: images per vmapped batch (memory grows with batch x number of weights).
      engine: `Engine`: the CRF method that scores the grid (default: the lattice mean-field).
      pad_multiple: None: images are batched with others of exactly their size (one compilation
        per size). An int: each image is padded at the bottom and right (edge pixels repeated) to
        the next multiple of it, so that sizes share batches and compilations; padded pixels take
        no part in any CRF message and are not scored (the only difference from the unpadded CRF
        is the lattice vertices they add, which can join blur paths).
    Returns:
      SearchResult with all rows, the best parameters and the mIoU without CRF.
    """
    images, probs, labels = _as_lists(images, probs, labels, num_classes)
    engine = engine.validate()
    confusion_matrix, miou = _scoring()
    masks = [np.ones(image.shape[:2], bool) for image in images]
    baseline = sum(np.asarray(confusion_matrix(jnp.asarray(lab), jnp.asarray(p).argmax(-1),
                                               num_classes, ignore_label)).astype(np.int64)
                   for lab, p in zip(labels, probs))
    if pad_multiple:
        images, probs, labels, masks = _pad(images, probs, labels, masks, int(pad_multiple),
                                            ignore_label)
    grid = dict(PAPER_COARSE_GRID if coarse_grid is None else coarse_grid)
    missing = [f for f in GRID_FIELDS if f not in grid]
    if missing:
        raise ValueError(f"coarse_grid lacks values for {missing}; give a tuple per field")
    # The lattice key packing is sized for the smallest standard deviations of both rounds, so the
    # refinement reuses the first round's compilations.
    steps = dict(REFINE_STEPS, **(refine_steps or {}))
    # The separable filter's band is sized for the largest sigma_alpha of both rounds.
    layout_stds = tuple(
        min(v for v in (min(grid[f]) - (steps[f] if refine else 0.0), min(grid[f])) if v > 0)
        for f in ("bi_xy_std", "bi_rgb_std")) + (
        max(grid["bi_xy_std"]) + (steps["bi_xy_std"] if refine else 0.0),)
    data = _Images(images, probs, labels, masks)
    sweep = _Sweep(num_classes, ignore_label, iterations, layout_stds, engine, confusion_matrix)
    rows, scored = [], {}
    rounds = [grid]
    while rounds:
        current = rounds.pop(0)
        for params, confusion in _evaluate_grid(data, current, sweep, batch_size, progress,
                                                scored):
            score = miou(confusion)
            scored[params] = score
            rows.append((params, score))
        if refine and len(rows) and current is grid:
            best_so_far = max(rows, key=lambda row: row[1])[0]
            rounds.append(refine_grid(best_so_far, refine_steps))
    best, best_miou = max(rows, key=lambda row: row[1])
    return SearchResult(rows=rows, best=best, best_miou=best_miou, baseline_miou=miou(baseline))


class _Images(typing.NamedTuple):
    """The search's data: lists (or batches, [B, ...] arrays) of images, probabilities, labels,
    masks of the pixels that are scored and take part in messages, and (batches) which images are
    real rather than padding."""

    images: typing.Any
    probs: typing.Any
    labels: typing.Any
    masks: typing.Any
    valid: typing.Any = None

    def batch(self, indices, size):
        """The images at `indices` stacked, the last one repeated up to `size` (marked invalid)."""
        padded = list(indices) + [indices[0]] * (size - len(indices))
        return _Images(np.stack([self.images[i] for i in padded]),
                       np.stack([np.asarray(self.probs[i], np.float32) for i in padded]),
                       np.stack([np.asarray(self.labels[i], np.int32) for i in padded]),
                       np.stack([self.masks[i] for i in padded]),
                       np.arange(size) < len(indices))


@dataclasses.dataclass(frozen=True)
class _Sweep:
    """Static settings of one compiled sweep (hashable: a `jax.jit` static argument).

    layout_stds: lower bounds of sigma_alpha and sigma_beta over the search (the lattice's key
    packing) and the upper bound of sigma_alpha (the separable filter's band). capacity: lattice
    vertices reserved per image (meanfield only).
    """

    num_classes: int
    ignore_label: int
    iterations: int
    layout_stds: tuple
    engine: Engine
    confusion_matrix: typing.Callable
    pos_xy_std: float | None = None  # set per job (theta_gamma is static: one compilation each)
    capacity: int = 0


def _evaluate_grid(data, grid, sweep, batch_size, progress, already_scored):
    """Yields (CRFParams, summed confusion matrix) for every grid point not scored before.

    One jitted call per (batch of same-size images, sigma_alpha, sigma_beta); the weights are a
    vmapped axis padded to a power of two, so both rounds of the search share compilations.
    """
    by_size = collections.defaultdict(list)
    for index, image in enumerate(data.images):
        by_size[image.shape[:2]].append(index)
    weight_values = list(itertools.product(grid["bi_w"], grid["pos_w"]))
    padded_weights = 1 << max(2, (len(weight_values) - 1).bit_length())
    weights = np.array(weight_values + [weight_values[0]] * (padded_weights - len(weight_values)),
                       np.float32)
    batches = [(size, indices[i:i + batch_size])
               for size, indices in by_size.items() for i in range(0, len(indices), batch_size)]
    jobs = []
    for pos_xy_std, xy_std, rgb_std in itertools.product(grid["pos_xy_std"], grid["bi_xy_std"],
                                                         grid["bi_rgb_std"]):
        candidates = [CRFParams(sweep.iterations, float(bi_w), float(xy_std), float(rgb_std),
                                float(pos_w), float(pos_xy_std)) for bi_w, pos_w in weight_values]
        if not all(c in already_scored for c in candidates):
            jobs.append((candidates, float(pos_xy_std), np.array([xy_std, rgb_std], np.float32)))
    bar = _progress(len(jobs) * len(batches), progress)
    results = []
    for candidates, pos_xy_std, sigma in jobs:
        total = np.zeros((padded_weights, sweep.num_classes, sweep.num_classes), np.int64)
        for (height, width), indices in batches:
            batch = data.batch(indices, batch_size)
            capacity = (int(math.ceil(sweep.engine.capacity_factor * height * width))
                        if sweep.engine.method == "meanfield" else 0)
            static = dataclasses.replace(sweep, pos_xy_std=pos_xy_std, capacity=capacity)
            confusions, needed = _sweep(batch, sigma, weights, static)
            if int(needed) > capacity:
                confusions, _ = _sweep(batch, sigma, weights,
                                       dataclasses.replace(static, capacity=6 * height * width))
            total += np.asarray(confusions, np.int64)
            bar.update(1)
        results += [(c, total[i]) for i, c in enumerate(candidates) if c not in already_scored]
    bar.close()
    return results


@functools.partial(jax.jit, static_argnames=("sweep",))
def _sweep(batch, sigma_2, weights_Wx2, sweep):
    """Confusion matrices [W, K, K] summed over the batch's valid images, and the largest lattice
    size (0 for the separable engine, which has no lattice)."""
    engine, pos_xy_std = sweep.engine, sweep.pos_xy_std

    def one_image(image, probs, labels, mask):
        if engine.method == "separable":
            options = engine.separable_options
            lay = separable.layout(*image.shape[:2], sweep.layout_stds[2], options)
            prepared = separable.prepare(image, probs, sigma_2[0], sigma_2[1],
                                         pos_xy_std=pos_xy_std, lay=lay, options=options,
                                         valid_HxW=mask)
            iterate = functools.partial(separable.iterate, prepared, bi_xy_std=sigma_2[0],
                                        lay=lay, options=options)
            num_vertices = jnp.zeros((), jnp.int32)
        else:
            prepared = meanfield.prepare(image, probs, sigma_2[0], sigma_2[1],
                                         pos_xy_std=pos_xy_std, capacity=sweep.capacity,
                                         layout_stds=sweep.layout_stds[:2], valid_HxW=mask)
            iterate = functools.partial(meanfield.iterate, prepared)
            num_vertices = prepared.lattice.num_vertices

        def one_weight(weight_2):
            q = iterate(weight_2[1], weight_2[0], pos_xy_std=pos_xy_std,
                        iterations=sweep.iterations)
            scored = jnp.where(mask, labels, sweep.ignore_label)
            return sweep.confusion_matrix(scored, jnp.argmax(q, axis=-1), sweep.num_classes,
                                          sweep.ignore_label)

        return jax.vmap(one_weight)(weights_Wx2), num_vertices

    confusions, num_vertices = jax.vmap(one_image)(batch.images, batch.probs, batch.labels,
                                                   batch.masks)
    keep = batch.valid[:, None, None, None].astype(confusions.dtype)
    return jnp.sum(confusions * keep, axis=0), jnp.max(jnp.where(batch.valid, num_vertices, 0))


def _as_lists(images, probs, labels, num_classes):
    images, probs, labels = list(images), list(probs), list(labels)
    if not (len(images) == len(probs) == len(labels)) or not images:
        raise ValueError(
            f"images, probs and labels must be non-empty and of equal length, got {len(images)}, "
            f"{len(probs)}, {len(labels)}")
    for i, (image, prob, label) in enumerate(zip(images, probs, labels)):
        image, prob, label = np.asarray(image), np.asarray(prob), np.asarray(label)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"images[{i}] must be uint8 [H, W, 3], got {image.dtype} "
                             f"{image.shape}")
        if prob.shape != image.shape[:2] + (num_classes,):
            raise ValueError(f"probs[{i}] must be [H, W, num_classes={num_classes}] matching the "
                             f"image {image.shape[:2]}, got {prob.shape}")
        if label.shape != image.shape[:2]:
            raise ValueError(f"labels[{i}] must be [H, W] = {image.shape[:2]}, got {label.shape}")
        images[i], probs[i], labels[i] = image, prob, label
    return images, probs, labels


def _pad(images, probs, labels, masks, multiple, ignore_label):
    """Pads every image to the next multiple of `multiple` (edge pixels, masked, not scored)."""
    out = ([], [], [], [])
    for image, prob, label, mask in zip(images, probs, labels, masks):
        height, width = image.shape[:2]
        pad = ((0, -height % multiple), (0, -width % multiple))
        out[0].append(np.pad(image, pad + ((0, 0),), mode="edge"))
        out[1].append(np.pad(np.asarray(prob, np.float32), pad + ((0, 0),), mode="edge"))
        out[2].append(np.pad(label, pad, constant_values=ignore_label))
        out[3].append(np.pad(mask, pad, constant_values=False))
    return out


def _progress(total, enabled):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a project dependency
        enabled = False
    if not enabled:
        return _NoProgress()
    return tqdm(total=total, desc="CRF search (sigma pairs x batches)", unit="batch")


class _NoProgress:
    def update(self, _):
        pass

    def close(self):
        pass
