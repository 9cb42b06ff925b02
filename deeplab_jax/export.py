r"""Export inference (uint8 images -> label map) as a self-contained artifact.

    python -m deeplab_jax.export --weights=weights/v2_voc --output=deeplab.jaxexport \
        [--input_size=513,513] [--crf]
    python -m deeplab_jax.export --config=configs/demo.py --workdir=/tmp/deeplab_demo \
        --output=demo.jaxexport
    python -m deeplab_jax.export --weights=weights/v2_voc --saved_model --output=saved_model/

Writes `serving.export.export_inference`'s jax.export artifact (symbolic batch, fixed
--input_size, CPU and CUDA; `serving.export.load_inference` runs it without the model code), or
with --saved_model a TensorFlow SavedModel (signature serving_default: images -> labels; needs
TensorFlow) serialised for the StableHLO version the installed TensorFlow reads
(`serving.tf_compat`). --crf appends the mean-field dense CRF (config.crf parameters, else
DeepLab-v2's). The model is that of --weights (deeplab_model.json) or of the training config and
the newest checkpoint of --workdir.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from deeplab_jax import cli, command_logging, weights
from deeplab_jax.crf import CRFParams
from deeplab_jax.parallel import xla_flags
from deeplab_jax.serving import export as serving_export
from deeplab_jax.serving import tf_compat
from deeplab_jax.train.state import load_trained
from deeplab_jax.weights import model_info


def load_model(weights_dir=None, config=None, workdir=None):
    """(model, host variables) of converted weights or of a training run's newest checkpoint."""
    if weights_dir:
        return weights.load_model(weights_dir)
    trained = load_trained(config, workdir)  # verified: intact and finite
    return trained.model, jax.device_get(trained.variables)


def export(model, variables, output, input_size, crf=None, saved_model=False):
    """Writes the artifact (or SavedModel directory) at `output`; returns `output`."""
    if saved_model:
        with tf_compat.stablehlo_for_tensorflow():
            serving_export.export_saved_model(model, variables, output, input_size, crf=crf)
    else:
        serving_export.export_inference(model, variables, output, input_size, crf=crf)
    return output


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    if bool(FLAGS.weights) == bool(FLAGS.workdir):
        raise app.UsageError("give --weights (converted weights) or --config and --workdir")
    if FLAGS.workdir and FLAGS.config is None:
        raise app.UsageError("--workdir needs the training --config")
    try:
        size = tuple(int(s) for s in FLAGS.input_size)
        if FLAGS.weights:
            model_info.read_model_info(FLAGS.weights)  # a clear error before any loading
        model, variables = load_model(FLAGS.weights, FLAGS.config, FLAGS.workdir)
        crf = None
        if FLAGS.crf:
            crf = CRFParams.from_config(FLAGS.config.crf) if FLAGS.config else CRFParams()
        export(model, variables, FLAGS.output, size, crf=crf, saved_model=FLAGS.saved_model)
    except (weights.WeightImportError, ValueError, FileNotFoundError, ImportError,
            tf_compat.IncompatibleTensorFlowError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    kind = "TF SavedModel" if FLAGS.saved_model else "jax.export artifact"
    print(f"wrote {kind} {FLAGS.output} (input {size[0]}x{size[1]}, batch any"
          f"{', with CRF' if crf else ''})")
    return 0


def define_flags():
    config_flags.DEFINE_config_file("config", None, "training configuration (with --workdir; "
                                    "optional with --weights: CRF parameters)", lock_config=True)
    flags.DEFINE_string("weights", None, "converted weights (weights.fetch / weights.convert)")
    flags.DEFINE_string("workdir", None, "training run whose newest checkpoint is exported")
    flags.DEFINE_string("output", None, "artifact file (or SavedModel directory)")
    flags.DEFINE_list("input_size", ["513", "513"], "height,width the artifact takes (fixed)")
    flags.DEFINE_bool("crf", False, "refine with the mean-field dense CRF before the argmax")
    flags.DEFINE_bool("saved_model", False, "write a TF SavedModel instead (needs TensorFlow)")
    flags.mark_flags_as_required(["output"])


def run():
    xla_flags.apply()  # before JAX starts its backends (importing modules does not start them)
    command_logging.configure(logging.WARNING)
    cli.run_command(define_flags, main)


if __name__ == "__main__":
    run()
