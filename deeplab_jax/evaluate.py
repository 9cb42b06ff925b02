r"""Evaluate a model: mIoU, per-class IoU and trimap accuracy on a data set's eval split.

    # Converted published weights (weights.fetch / weights.convert), no training run needed:
    python -m deeplab_jax.evaluate --weights=weights/v2_voc --config=configs/voc.py \
        [--config.eval.scales=0.5,0.75,1.0 --config.eval.flip=True --config.crf.enabled=True] \
        [--output=DIR]
    # The newest checkpoint of a training run:
    python -m deeplab_jax.evaluate --config=configs/demo.py --workdir=/tmp/deeplab_demo

With --weights the model comes from the weights' deeplab_model.json and the config gives the data
set and the test-time modes (config.eval: scales, flip, fusion, sliding window, output stride,
trimap widths; config.crf); the results (settings, mIoU, per-class IoU, CRF and trimap results,
confusion matrix, the published score for comparison) are written as results.json and
results.txt into their own directory (--output, default <weights>/eval/<config>-<time>), never
into a training run's logs. With --workdir the results are logged under the workdir
(TensorBoard, metrics.jsonl) as during training. Both print the table.
`evaluate_weights`, `evaluate_checkpoint` and `collect_val_probabilities` are the same steps for
notebooks and scripts.
"""

import dataclasses
import datetime
import json
import math
import os
import sys

import jax
import numpy as np
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from deeplab_jax import cli, command_logging, experiment, weights
from deeplab_jax.evaluation import report
from deeplab_jax.evaluation.evaluator import EvalSettings, Evaluator
from deeplab_jax.finite import NonFiniteError
from deeplab_jax.parallel import mesh as mesh_lib
from deeplab_jax.parallel import xla_flags
from deeplab_jax.train.checkpoint import CheckpointError
from deeplab_jax.train.metric_writer import MetricWriter
from deeplab_jax.train.state import load_trained
from deeplab_jax.weights import model_info

RESULTS_FILE = "results.json"


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


def weights_model(config, weights_dir, descriptor):
    """(model, info) of converted weights for evaluation on `descriptor`'s classes."""
    info = model_info.read_model_info(weights_dir)
    if int(info["num_classes"]) != descriptor.num_classes:
        raise ValueError(
            f"{weights_dir} predicts {info['num_classes']} classes (model {info['model']}, data "
            f"set {info.get('dataset') or 'not recorded'}) but the config's data set "
            f"{descriptor.name!r} has {descriptor.num_classes}; evaluate it with the config of "
            "its data set")
    if info.get("dataset") and info["dataset"] != descriptor.name:
        logging.warning("%s was trained on %s; evaluating on %s (same number of classes)",
                        weights_dir, info["dataset"], descriptor.name)
    eval_stride = int(config.eval.get("output_stride", 0) or 0)
    changes = {"output_stride": eval_stride} if eval_stride else {}
    return model_info.build_model(info, **changes), info


def evaluate_weights(config, weights_dir, output=None, config_name="config", progress=False):
    """Evaluates converted weights on the config's data set; writes results.json/.txt.

    Returns (results, output directory). The output directory must not hold results already.
    """
    descriptor = experiment.dataset_descriptor(config)
    model, info = weights_model(config, weights_dir, descriptor)
    output = epath.Path(output or default_output(weights_dir, config_name))
    if (output / RESULTS_FILE).exists():
        raise FileExistsError(f"{output / RESULTS_FILE} exists; choose another --output")
    mesh = mesh_lib.create_mesh()
    variables = jax.device_put(weights.load_variables(weights_dir), mesh_lib.replicated(mesh))
    settings = EvalSettings.from_config(config, descriptor)
    evaluator = Evaluator(model, mesh, descriptor, settings)
    source = experiment.load_source(config, descriptor, descriptor.eval_split)
    results = evaluator.evaluate(variables, source, progress=progress)
    record = results_record(results, settings, dict(
        weights=str(weights_dir), model=info["model"], config=config_name,
        dataset=descriptor.name, split=descriptor.eval_split,
        num_images=min(len(source), settings.max_examples or len(source)),
        model_overrides=info.get("overrides", {}), output_stride=int(model_stride(model)),
        published=info.get("published")))
    if jax.process_index() == 0:
        output.mkdir(parents=True, exist_ok=True)
        (output / RESULTS_FILE).write_text(json.dumps(record, indent=2))
        (output / "results.txt").write_text(summary(results, record) + "\n")
    return results, output


def model_stride(model):
    return getattr(getattr(model, "backbone", None), "output_stride", 0) or 0


def default_output(weights_dir, config_name):
    """<weights>/eval/<config name>-<UTC time>: one folder per evaluation."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return epath.Path(weights_dir) / "eval" / f"{config_name}-{stamp}"


def config_name_of(filename):
    """'configs/voc.py:v2_msc' -> 'voc-v2_msc'."""
    path, _, variant = (filename or "config").partition(":")
    stem = os.path.splitext(os.path.basename(path))[0] or "config"
    return f"{stem}-{variant}" if variant else stem


def _plain(value):
    """JSON-ready values: dataclasses, tuples, numpy scalars/arrays; NaN (no pixels) -> None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def results_record(results, settings, about):
    """What results.json holds: what was evaluated, how, and every number measured."""
    record = dict(about)
    record["settings"] = _plain(settings)
    for key, value in results.items():
        if key in ("per_class_iou", "crf_per_class_iou"):
            continue  # the same numbers as per_class, by class name
        record[key] = _plain(value)
    return record


def summary(results, record):
    lines = [f"{record['weights']} ({record['model']}) on {record['dataset']} "
             f"{record['split']} ({record['num_images']} images)",
             report.summary_text(results, split=record["split"])]
    for setting, score in (record.get("published") or {}).items():
        lines.append(f"published: {setting}: {score}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    command_logging.configure(logging.INFO)
    if bool(FLAGS.weights) == bool(FLAGS.workdir):
        raise app.UsageError("give either --weights (converted weights) or --workdir (a training "
                             "run's checkpoints)")
    if FLAGS.workdir:
        try:
            results = evaluate_checkpoint(FLAGS.config, FLAGS.workdir, progress=True)
        except (CheckpointError, NonFiniteError, FileNotFoundError) as error:
            print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
        print(report.summary_text(results))
        return 0
    name = config_name_of(config_flags.get_config_filename(FLAGS["config"]))
    try:
        results, output = evaluate_weights(FLAGS.config, FLAGS.weights, FLAGS.output, name,
                                           progress=sys.stderr.isatty())
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print((output / "results.txt").read_text() if jax.process_index() == 0 else "")
    print(f"results written to {output}")
    return 0


def define_flags():
    config_flags.DEFINE_config_file("config", None, "configuration file (configs/*.py[:variant]): "
                                    "data set and test-time modes", lock_config=True)
    flags.DEFINE_string("workdir", None, "directory with the training checkpoints")
    flags.DEFINE_string("weights", None, "converted weights (weights.fetch / weights.convert); "
                        "the model comes from their deeplab_model.json")
    flags.DEFINE_string("output", None, "results directory for --weights (default "
                        "<weights>/eval/<config>-<time>)")
    flags.mark_flags_as_required(["config"])


def run():
    xla_flags.apply()  # before JAX starts its backends (importing modules does not start them)
    cli.run_command(define_flags, main)


if __name__ == "__main__":
    run()
