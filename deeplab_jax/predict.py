r"""Segment images with converted weights or a training run's checkpoint.

    python -m deeplab_jax.predict --weights=weights/v2_voc --input=photos/ --output=out/ \
        [--crf] [--scales=0.5,0.75,1.0] [--flip] [--probabilities]
    python -m deeplab_jax.predict --config=configs/demo.py --workdir=/tmp/deeplab_demo \
        --input=photos/ --output=out/

--weights needs no config: the model, its classes and the data set (palette) come from the
weights' deeplab_model.json (VOC colours when it names no data set); a --config, when given,
supplies the test-time modes and CRF parameters (config.eval, config.crf). --workdir needs the
training config. For every image (one file or a folder, any size; subfolders are kept in the
output) writes <name>.png, the label map as a palette PNG (class ids exact), <name>_overlay.jpg,
and with --probabilities <name>_probs.npy (float16 H x W x K class probabilities, after the CRF
when --crf). 16-bit grayscale images are scaled to 8 bits (`serving.predictor`). Unreadable files
are reported and skipped; the run continues and lists them at the end (exit status 1 if any).
Files in the folder without an image extension (.jpg .jpeg .png .bmp .ppm .tif .tiff .webp) are
named in a warning and left alone.
"""

import dataclasses
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from deeplab_jax import command_logging, experiment, weights
from deeplab_jax.crf import METHODS, CRFParams
from deeplab_jax.finite import NonFiniteError
from deeplab_jax.inference import TestTimeOptions
from deeplab_jax.parallel import xla_flags
from deeplab_jax.serving.predictor import Predictor, list_images, segment_files
from deeplab_jax.train.checkpoint import CheckpointError
from deeplab_jax.train.state import load_trained
from deeplab_jax.weights import model_info


def load_weights(weights_dir, config=None):
    """(model, variables, palette) of converted weights; the palette from their data set, the
    config's when they record none."""
    info = model_info.read_model_info(weights_dir)
    palette = model_info.palette(info)
    if config is not None and not model_info.descriptor_of(info):
        palette = experiment.dataset_descriptor(config).palette
    variables = jax.device_put(weights.load_variables(weights_dir))  # once, not per image
    return model_info.build_model(info), variables, palette


def load_checkpoint(config, workdir):
    """(model, variables, palette) of the newest checkpoint of a training run."""
    trained = load_trained(config, workdir)  # verified: intact and finite
    return trained.model, trained.variables, trained.descriptor.palette


def test_time(config, scales=(), flip=False, crf=False, crf_method=None):
    """(TestTimeOptions, CRFParams or None, CRF method) from the config (if any) and the flags."""
    options = TestTimeOptions.from_config(config) if config is not None else TestTimeOptions()
    if scales:
        options = dataclasses.replace(options, scales=tuple(float(s) for s in scales))
    if flip:
        options = dataclasses.replace(options, flip=True)
    use_crf = crf or (config is not None and config.crf.enabled)
    params = (CRFParams.from_config(config.crf) if config is not None else CRFParams()) \
        if use_crf else None
    if crf_method is None:
        crf_method = config.crf.method if config is not None else "meanfield"
    return options, params, crf_method


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    config = FLAGS.config
    if bool(FLAGS.weights) == bool(FLAGS.workdir):
        raise app.UsageError(
            "give --weights (converted weights) or --workdir (a training run's checkpoints)")
    if FLAGS.workdir and config is None:
        raise app.UsageError("--workdir needs the training --config")
    try:
        if FLAGS.weights:
            model, variables, palette = load_weights(FLAGS.weights, config)
        else:
            model, variables, palette = load_checkpoint(config, FLAGS.workdir)
        files = list_images(FLAGS.input)
    except (weights.WeightImportError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except (CheckpointError, NonFiniteError) as error:  # a run's checkpoint that does not fit
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(2)
    options, crf, crf_method = test_time(config, FLAGS.scales, FLAGS.flip, FLAGS.crf,
                                           FLAGS.crf_method)
    predictor = Predictor(model, variables, options, crf_params=crf, crf_method=crf_method)
    failures = segment_files(predictor, files, FLAGS.output, palette,
                             progress=sys.stderr.isatty(), probabilities=FLAGS.probabilities)
    print(f"segmented {len(files) - len(failures)} of {len(files)} images into {FLAGS.output}")
    if failures:
        print(f"{len(failures)} file(s) could not be read:")
        for path, message in failures:
            print(f"  {path}: {message}")
        sys.exit(1)


def define_flags():
    config_flags.DEFINE_config_file(
        "config", None, "configuration file: needed with --workdir; with --weights optional "
        "(test-time modes, CRF parameters)", lock_config=True)
    flags.DEFINE_string("workdir", None, "directory with the training checkpoints")
    flags.DEFINE_string("weights", None,
                        "converted weights (python -m deeplab_jax.weights.fetch / .convert)")
    flags.DEFINE_string("input", None, "an image file or a directory of images (searched "
                        "recursively; subfolders are kept in the output)")
    flags.DEFINE_string("output", None, "directory for the label PNGs and overlays")
    flags.DEFINE_bool("crf", False, "refine with the dense CRF (config.crf parameters, else "
                      "DeepLab-v2's)")
    flags.DEFINE_enum("crf_method", None, list(METHODS),
                      "dense CRF method (default config.crf.method, else meanfield); 'auto' "
                      "chooses by backend")
    flags.DEFINE_list("scales", [], "input scales, e.g. 0.5,0.75,1.0 (default config.eval.scales "
                      "or 1.0)")
    flags.DEFINE_bool("flip", False, "also average left-right flipped predictions")
    flags.DEFINE_bool("probabilities", False, "also write <name>_probs.npy (float16 H x W x K)")
    flags.mark_flags_as_required(["input", "output"])


def run():
    xla_flags.apply()  # before JAX starts its backends (importing modules does not start them)
    define_flags()
    command_logging.configure(logging.WARNING)
    app.run(main)


if __name__ == "__main__":
    run()
