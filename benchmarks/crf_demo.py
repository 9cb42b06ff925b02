"""Dense CRF methods on a trained demo model's val probabilities: labels, mIoU gain, time, search.

    python -m deeplab_jax.main --config=configs/demo.py --workdir=/tmp/crf_demo_run  # once
    python benchmarks/crf_demo.py --workdir=/tmp/crf_demo_run --num_images=100 [--search]

Collects the softmax probabilities of the first `--num_images` val images of the demo data set
(cached in WORKDIR/crf_demo_probs.npz), then per method: the share of labels equal to the exact CRF
(our permutohedral method, = pydensecrf2), the val mIoU without and with the CRF, the "gain kept"
(mIoU gain over the unaries as a share of the exact CRF's gain) and the wall time over all images
(after a warm-up image of each size: compilation excluded). DeepLab-v2 parameters, 10 iterations.
`--search` also times the paper's coarse-to-fine parameter search (§4.1.1: 4 x 8 x 4 coarse grid,
then +-1 refinement step) over the same images with the separable CRF (and, with
`--search_meanfield`, with the lattice mean-field).
"""

import argparse
import os
import sys
import time

import numpy as np

# Runnable from a checkout without installing the package.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.crf import dense_crf_arguments, split_methods  # noqa: E402


def load_probabilities(workdir, num_images):
    """(images, probs, labels, num_classes) of the first val images, cached next to the model."""
    cache = os.path.join(workdir, f"crf_demo_probs_{num_images}.npz")
    names = ("image", "probs", "label")
    if os.path.exists(cache):
        data = np.load(cache)
        count = len(data.files) // len(names)
        return tuple([data[f"{name}_{i}"] for i in range(count)] for name in names)
    from configs import demo
    from deeplab_jax import evaluate

    triples = list(evaluate.collect_val_probabilities(demo.get_config(), workdir, num_images))
    images, probs, labels = (list(x) for x in zip(*triples[:num_images]))
    np.savez(cache, **{f"{name}_{i}": array for name, arrays in zip(names, (images, probs, labels))
                       for i, array in enumerate(arrays)})
    return images, probs, labels


def run_method(method, images, probs):
    """Labels of every image and the wall time (a first call per image size is a warm-up)."""
    from deeplab_jax.crf import dense_crf

    method, kwargs = dense_crf_arguments(method)
    seen = set()
    for image, prob in zip(images, probs):
        if image.shape not in seen:
            seen.add(image.shape)
            np.asarray(dense_crf(image, prob, method=method, **kwargs))
    start = time.perf_counter()
    labels = [np.asarray(dense_crf(image, prob, method=method, **kwargs)).argmax(-1)
              for image, prob in zip(images, probs)]
    return labels, time.perf_counter() - start


def miou(predictions, labels, num_classes):
    from deeplab_jax.evaluation.metrics import confusion_matrix_numpy, iou_from_confusion

    total = sum(confusion_matrix_numpy(label, prediction, num_classes, ignore_label=255)
                for label, prediction in zip(labels, predictions))
    return iou_from_confusion(total)["miou"]


def time_search(images, probs, labels, num_classes, method):
    from deeplab_jax.evaluation import crf_search

    start = time.perf_counter()
    result = crf_search.search(images, probs, labels, num_classes, progress=False,
                               engine=crf_search.Engine(method=method))
    elapsed = time.perf_counter() - start
    best = {f: getattr(result.best, f) for f in crf_search.GRID_FIELDS}
    print(f"search ({method}): {len(result.rows)} parameter sets x {len(images)} images in "
          f"{elapsed:.0f} s; best {best}, mIoU {result.best_miou:.4f} vs "
          f"{result.baseline_miou:.4f} without CRF")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/crf_demo_run")
    parser.add_argument("--num_images", type=int, default=100)
    parser.add_argument("--methods", default="permutohedral,meanfield,separable")
    parser.add_argument("--search", action="store_true")
    parser.add_argument("--search_meanfield", action="store_true")
    args = parser.parse_args()
    images, probs, labels = load_probabilities(args.workdir, args.num_images)
    num_classes = probs[0].shape[-1]
    sizes = sorted({image.shape[:2] for image in images})
    unary = [p.argmax(-1) for p in probs]
    base = miou(unary, labels, num_classes)
    exact, exact_time = run_method("permutohedral", images, probs)
    exact_miou = miou(exact, labels, num_classes)
    changed = np.mean(np.concatenate([(e != u).ravel() for e, u in zip(exact, unary)]))
    print(f"{len(images)} demo val images, sizes {sizes[0]}..{sizes[-1]}, K={num_classes}; "
          f"mIoU without CRF {base:.4f}, exact CRF {exact_miou:.4f}; labels changed by the exact "
          f"CRF {changed:.2%}")
    print("| method | labels = exact | mIoU | gain kept | time (s) | time vs permutohedral |")
    print("|---|---|---|---|---|---|")
    for method in split_methods(args.methods):
        if method == "permutohedral":
            predictions, elapsed = exact, exact_time
        else:
            predictions, elapsed = run_method(method, images, probs)
        agree = np.mean(np.concatenate([(p == e).ravel() for p, e in zip(predictions, exact)]))
        score = miou(predictions, labels, num_classes)
        gain = (score - base) / (exact_miou - base) if exact_miou != base else float("nan")
        print(f"| {method} | {agree:.2%} | {score:.4f} | {gain:.2f} | {elapsed:.1f} | "
              f"{elapsed / exact_time:.2f}x |", flush=True)
    if args.search:
        time_search(images, probs, labels, num_classes, "separable")
    if args.search_meanfield:
        time_search(images, probs, labels, num_classes, "meanfield")


if __name__ == "__main__":
    main()
