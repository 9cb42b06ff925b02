"""How closely the jitted CRF methods follow the exact one on photographs: labels equal to it.

    python benchmarks/crf_photos.py [--size voc|cityscapes] [--methods separable,...]

Inputs: scikit-image's astronaut, coffee and chelsea resized to the size, each with 3-class
probabilities from a colour clustering of the photograph (`tests/crf.cluster_probs`: the CRF
changes 11-12% of their labels at VOC size), and the 21-class benchmark input of
`benchmarks/crf.py` (astronaut; the CRF changes 17% of its labels). Per input and method: the share
of labels equal to the exact CRF's (our permutohedral method, equal to pydensecrf2).
"separable[k=v,...]" runs the separable method with those `SeparableOptions` fields changed.
DeepLab-v2 parameters, 10 iterations. Timings are in `benchmarks/crf.py`; this script measures
agreement only.
"""

import argparse
import os
import sys

import numpy as np

# Runnable from a checkout without installing the package.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.crf import SIZES, dense_crf_arguments, make_inputs, split_methods  # noqa: E402
from tests.crf import cluster_probs, photo  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea")


def inputs(size):
    """{name: (image, probs)} at the size: the three photographs and the benchmark input."""
    height, width, num_classes = SIZES[size]
    result = {}
    for name in PHOTOS:
        image = photo(name, height, width)
        result[name] = (image, cluster_probs(image, 3)[0])
    result["benchmark input"] = make_inputs(height, width, num_classes)
    return result


def labels(method, image, probs):
    from deeplab_jax.crf import dense_crf

    method, kwargs = dense_crf_arguments(method)
    return np.asarray(dense_crf(image, probs, method=method, **kwargs)).argmax(-1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="voc")
    parser.add_argument("--methods", default="meanfield,separable")
    args = parser.parse_args()
    methods = split_methods(args.methods)
    data = inputs(args.size)
    names = list(data)
    rows = {method: [] for method in methods}
    changed = []
    for name in names:
        image, probs = data[name]
        exact = labels("permutohedral", image, probs)
        changed.append(np.mean(exact != probs.argmax(-1)))
        for method in methods:
            rows[method].append(np.mean(labels(method, image, probs) == exact))
            print(f"{name} {method}: {rows[method][-1]:.2%}", file=sys.stderr, flush=True)
    height, width, _ = SIZES[args.size]
    print(f"\n{args.size} {width}x{height}; labels changed by the exact CRF: "
          + ", ".join(f"{n} {c:.1%}" for n, c in zip(names, changed)))
    print("| method | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for method in methods:
        print(f"| {method} | " + " | ".join(f"{v:.2%}" for v in rows[method]) + " |")


if __name__ == "__main__":
    main()
