"""Entry point: python -m deeplab_jax.main --config=configs/demo.py --workdir=/tmp/deeplab_demo

Parses flags and calls `train.train_and_evaluate(config, workdir)`; nothing else (tests and notebooks
call the same function). `--config.<field>=value` overrides any config field; the config is locked,
so a misspelt field is an error rather than a silently ignored value.
"""

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "configuration file (configs/*.py[:variant])",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and predictions")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from deeplab_jax import train  # after flag parsing: importing JAX is slow and not needed for --help

    logging.set_verbosity(logging.INFO)
    results = train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    if results:
        print(f"final val mIoU {results['miou']:.4f} (pixel accuracy "
              f"{results['pixel_accuracy']:.4f}); workdir {flags.FLAGS.workdir}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
