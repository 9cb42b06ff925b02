"""Segment images: python -m deeplab_jax.predict --config=... (--workdir=... | --weights=DIR)
                   --input=IMAGE_OR_DIR --output=DIR [--crf] [--scales=0.5,0.75,1] [--flip]

For every image (one file or a folder, any size) writes <stem>.png, the label map as a palette PNG
(VOC colours; class ids exact), and <stem>_overlay.jpg, the classes blended over the image
(`deeplab_jax.serving.predictor`). Unreadable files are reported and skipped; the run continues
and lists them at the end (exit status 1 if any).
"""

import dataclasses
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from deeplab_jax import experiment, weights
from deeplab_jax.crf import CRFParams
from deeplab_jax.inference import TestTimeOptions
from deeplab_jax.parallel import xla_flags
from deeplab_jax.serving.predictor import Predictor, list_images, segment_files
from deeplab_jax.train.state import load_trained


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    config = FLAGS.config
    if FLAGS.weights:
        model, variables = weights.load_model(FLAGS.weights)
        descriptor = experiment.dataset_descriptor(config)
    elif FLAGS.workdir:
        model, variables, descriptor, _, _ = load_trained(config, FLAGS.workdir)
    else:
        raise app.UsageError(
            "give --workdir (trained checkpoints) or --weights (converted weights)")
    crf = CRFParams.from_config(config.crf) if (FLAGS.crf or config.crf.enabled) else None
    options = TestTimeOptions.from_config(config)
    if FLAGS.scales:
        options = dataclasses.replace(options, scales=tuple(float(s) for s in FLAGS.scales))
    if FLAGS.flip:
        options = dataclasses.replace(options, flip=True)
    predictor = Predictor(model, variables, options, crf_params=crf, crf_method=config.crf.method)
    files = list_images(FLAGS.input)
    failures = segment_files(predictor, files, FLAGS.output, descriptor.palette,
                             progress=sys.stderr.isatty())
    print(f"segmented {len(files) - len(failures)} of {len(files)} images into {FLAGS.output}")
    if failures:
        print(f"{len(failures)} file(s) could not be read:")
        for path, message in failures:
            print(f"  {path}: {message}")
        sys.exit(1)


def define_flags():
    config_flags.DEFINE_config_file("config", None, "configuration file", lock_config=True)
    flags.DEFINE_string("workdir", None, "directory with the training checkpoints")
    flags.DEFINE_string("weights", None,
                        "converted weights (python -m deeplab_jax.weights.convert)")
    flags.DEFINE_string("input", None, "an image file or a directory of images")
    flags.DEFINE_string("output", None, "directory for the label PNGs and overlays")
    flags.DEFINE_bool("crf", False, "refine with the dense CRF (config.crf parameters)")
    flags.DEFINE_list("scales", [], "input scales, e.g. 0.5,0.75,1.0 (default config.eval.scales)")
    flags.DEFINE_bool("flip", False, "also average left-right flipped predictions")
    flags.mark_flags_as_required(["config", "input", "output"])


def run():
    xla_flags.apply()  # before JAX starts its backends (importing modules does not start them)
    define_flags()
    logging.set_verbosity(logging.WARNING)
    app.run(main)


if __name__ == "__main__":
    run()
