"""Command line of the CRF parameter search (DeepLab-v2 §4.1.1) on a trained model's val images.

    python -m deeplab_jax.crf.tune --config=configs/voc.py --workdir=/tmp/voc --num_images=100

Collects the softmax probabilities of the first val images, runs the coarse-to-fine grid search
(`deeplab_jax.evaluation.crf_search`; `--method=separable` scores it with the separable CRF, the
faster choice on a CPU for small images), writes the mIoU table (TSV) and the best parameters
(JSON), and prints them as config overrides.
"""

import itertools
import json

from absl import app, flags, logging
from ml_collections import config_flags

from deeplab_jax import evaluate
from deeplab_jax.evaluation import crf_search


def main(argv):
    """CLI: probabilities of a trained model -> search -> table + best parameters."""
    del argv
    FLAGS = flags.FLAGS
    config = FLAGS.config
    triples = itertools.islice(
        evaluate.collect_val_probabilities(config, FLAGS.workdir, FLAGS.num_images),
        FLAGS.num_images)
    images, probs, labels = zip(*triples)
    result = crf_search.search(images, probs, labels, num_classes=probs[0].shape[-1],
                               ignore_label=FLAGS.ignore_label, iterations=FLAGS.iterations,
                               batch_size=FLAGS.batch_size,
                               pad_multiple=FLAGS.pad_multiple or None,
                               engine=crf_search.Engine(method=FLAGS.method))
    output = FLAGS.output or f"{FLAGS.workdir}/crf_search.tsv"
    with open(output, "w") as f:
        f.write(result.table())
    best = {f: getattr(result.best, f) for f in crf_search.GRID_FIELDS + ("iterations",)}
    with open(output.rsplit(".", 1)[0] + "_best.json", "w") as f:
        json.dump(dict(best, miou=result.best_miou, miou_without_crf=result.baseline_miou), f,
                  indent=2)
    overrides = " ".join(f"--config.crf.{k}={v}" for k, v in best.items())
    logging.info("mIoU without CRF %.4f, best with CRF %.4f; table: %s", result.baseline_miou,
                 result.best_miou, output)
    print(f"best CRF parameters (mIoU {result.best_miou:.4f} vs {result.baseline_miou:.4f} "
          f"without CRF):\n  {overrides}")


def _define_flags():
    config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory with the trained model's checkpoints.")
    flags.DEFINE_integer("num_images", 100, "Validation images to search on (paper: 100).")
    flags.DEFINE_string("output", None, "TSV table path (default WORKDIR/crf_search.tsv).")
    flags.DEFINE_integer("ignore_label", 255, "Label value not scored.")
    flags.DEFINE_integer("iterations", 10, "Mean-field iterations (paper: 10).")
    flags.DEFINE_enum("method", "meanfield", ["meanfield", "separable"],
                      "CRF that scores the grid: 'meanfield' (the lattice, ~99.8% labels equal to "
                      "the exact CRF) or 'separable' (dense products, ~98%, 7x faster on a CPU "
                      "for small images; it finds the separable method's own best parameters).")
    flags.DEFINE_integer("batch_size", 4, "Images per vmapped batch.")
    flags.DEFINE_integer("pad_multiple", 64, "Pad images to multiples of this (fewer "
                         "compilations; padding is masked); 0: group by exact size.")
    flags.mark_flags_as_required(["config", "workdir"])


def run():
    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
