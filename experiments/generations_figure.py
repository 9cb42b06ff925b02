"""The generations on the demo data as one picture: each model's val predictions side by side.

    python experiments/generations_figure.py --run v1=/tmp/demo_v1 --run default=/tmp/demo_v2 \
        --run v3=/tmp/demo_v3 --run v3plus=/tmp/demo_v3plus \
        --run v3plus_pointrend=/tmp/demo_pointrend --crf default --output docs/demo_generations.jpg

Each `--run VARIANT=WORKDIR` names a `configs/demo.py` variant ("default" is v2) and a workdir
trained with it (`python -m deeplab_jax.main --config=configs/demo.py:VARIANT --workdir=WORKDIR`).
Rows are val images (`--images`, indices into the val split), columns the image, each run's
single-scale prediction (with the variant's own evaluation settings, e.g. output stride 8 for
v3/v3+), with `--crf VARIANT` that run again with multi-scale + flip inputs and the dense CRF
(its config's CRF parameters), and the ground truth (the ignored boundary band in label 255's
light colour).
"""

import argparse
import dataclasses
import os
import sys

import numpy as np

# Runnable from a checkout without installing the package.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TITLES = {"v1": "v1 LargeFOV", "default": "v2 ASPP-L", "v3": "v3", "v3plus": "v3+",
          "v3plus_pointrend": "v3+ PointRend", "tiny": "v2 (tiny)"}


def demo_config(variant, data_dir=None):
    from configs import demo

    config = demo.get_config(variant)
    if data_dir:
        config.dataset.data_dir = data_dir
    return config


def val_outputs(config, workdir, indices):
    """(images, labels, probabilities) of the val images at `indices` (in that order)."""
    from deeplab_jax import evaluate

    wanted = set(indices)
    found = {}
    for index, triple in enumerate(evaluate.collect_val_probabilities(config, workdir,
                                                                      max(indices) + 1)):
        if index in wanted:
            found[index] = triple
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"--images {missing}: the val split of {workdir}'s data set is shorter")
    images, probs, labels = (list(x) for x in zip(*(found[i] for i in indices)))
    return images, labels, probs


def crf_predictions(config, workdir, indices):
    """Labels of that run with multi-scale + flip inputs (0.75, 1, 1.25) and the dense CRF."""
    from deeplab_jax.crf import CRFParams, dense_crf

    config = config.copy_and_resolve_references()
    config.eval.scales = (0.75, 1.0, 1.25)
    config.eval.flip = True
    images, _, probs = val_outputs(config, workdir, indices)
    params = CRFParams.from_config(config.crf)
    return [np.asarray(dense_crf(image, prob, params, method=config.crf.method)).argmax(-1)
            for image, prob in zip(images, probs)]


@dataclasses.dataclass(frozen=True)
class Run:
    variant: str
    workdir: str

    @classmethod
    def parse(cls, text):
        variant, sep, workdir = text.partition("=")
        if not sep or variant not in TITLES:
            raise argparse.ArgumentTypeError(
                f"--run {text!r}: give VARIANT=WORKDIR with VARIANT one of {sorted(TITLES)}")
        return cls(variant, workdir)


def main():
    from deeplab_jax import experiment
    from deeplab_jax.serving import visualize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Run.parse, action="append", required=True)
    parser.add_argument("--crf", default=None, help="variant of a --run to show with MS/flip+CRF")
    parser.add_argument("--images", default="0,1,2,3", help="val indices, comma-separated")
    parser.add_argument("--output", default="docs/demo_generations.jpg")
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: TFDS's)")
    args = parser.parse_args()
    indices = [int(i) for i in args.images.split(",")]
    runs = {run.variant: run for run in args.run}
    if args.crf is not None and args.crf not in runs:
        parser.error(f"--crf {args.crf}: no --run with that variant (have {sorted(runs)})")
    predictions, images, labels, palette = {}, None, None, None
    for variant, run in runs.items():
        config = demo_config(variant, args.data_dir)
        images, labels, probs = val_outputs(config, run.workdir, indices)
        predictions[TITLES[variant]] = [p.argmax(-1) for p in probs]
        palette = experiment.dataset_descriptor(config).palette
        print(f"{TITLES[variant]}: {run.workdir}", flush=True)
    if args.crf is not None:
        run = runs[args.crf]
        predictions[f"{TITLES[args.crf]} +MS/flip+CRF"] = crf_predictions(
            demo_config(args.crf, args.data_dir), run.workdir, indices)
    grid = visualize.comparison_grid(images, labels, predictions, palette)
    visualize.save_jpeg(args.output, grid, quality=92)
    print(f"wrote {args.output} ({grid.shape[1]}x{grid.shape[0]})")


if __name__ == "__main__":
    main()
