"""Evaluate a trained model: python -m deeplab_jax.evaluate --config=configs/demo.py --workdir=DIR

Restores the newest checkpoint of the workdir, evaluates it on the data set's eval split with the
config's test-time modes (config.eval: scales, flip, sliding window, trimap widths; config.crf),
logs the results under the workdir (TensorBoard, metrics.jsonl) and prints mIoU and per-class IoU.
`evaluate_checkpoint` and `collect_val_probabilities` are the same steps for notebooks and scripts.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from deeplab_jax import experiment
from deeplab_jax.evaluation import report
from deeplab_jax.evaluation.evaluator import EvalSettings, Evaluator
from deeplab_jax.parallel import xla_flags
from deeplab_jax.train.metric_writer import MetricWriter
from deeplab_jax.train.state import load_trained


def evaluate_checkpoint(config, workdir, progress=False):
    """Evaluates the newest checkpoint on the eval split; logs under workdir; returns metrics."""
    trained = load_trained(config, workdir)
    evaluator = Evaluator(trained.model, trained.mesh, trained.descriptor,
                          EvalSettings.from_config(config, trained.descriptor))
    source = experiment.load_source(config, trained.descriptor, trained.descriptor.eval_split)
    results = evaluator.evaluate(trained.variables, source, progress=progress)
    writer = MetricWriter(workdir)
    try:
        report.log_results(results, writer, trained.step)
        if config.eval.num_overlays:
            writer.write_images(trained.step, report.overlay_panels(
                evaluator, trained.variables, source, config.eval.num_overlays))
    finally:
        writer.close()
    return results


def collect_val_probabilities(config, workdir, num_images):
    """Yields (image uint8 HxWx3, probs float32 HxWxK, label uint8 HxW) of the first val images."""
    trained = load_trained(config, workdir)
    evaluator = Evaluator(trained.model, trained.mesh, trained.descriptor,
                          EvalSettings.from_config(config, trained.descriptor),
                          return_probabilities=True)
    source = experiment.load_source(config, trained.descriptor, trained.descriptor.eval_split)
    yield from evaluator.probabilities(trained.variables, source, num_images)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    results = evaluate_checkpoint(flags.FLAGS.config, flags.FLAGS.workdir, progress=True)
    print(report.summary_text(results))


def define_flags():
    config_flags.DEFINE_config_file("config", None, "configuration file (configs/*.py[:variant])",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "directory with the training checkpoints")
    flags.mark_flags_as_required(["config", "workdir"])


def run():
    xla_flags.apply()  # before JAX starts its backends (importing modules does not start them)
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
