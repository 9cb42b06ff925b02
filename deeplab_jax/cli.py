"""Console-script entry points (pyproject [project.scripts]): one per command line.

    deeplab-jax / deeplab-jax-train   python -m deeplab_jax.main       train and evaluate
    deeplab-jax-evaluate              python -m deeplab_jax.evaluate   mIoU of weights or a run
    deeplab-jax-predict               python -m deeplab_jax.predict    segment images
    deeplab-jax-export                python -m deeplab_jax.export     jax.export / SavedModel
    deeplab-jax-convert               python -m deeplab_jax.weights.convert
    deeplab-jax-fetch                 python -m deeplab_jax.weights.fetch
    deeplab-jax-crf-tune              python -m deeplab_jax.crf.tune

Each applies the XLA CPU flags before anything can start JAX, then runs the module's `run()`.
absl's --help lists the flags of the module named by sys.argv[0] and prints the __main__ module's
docstring: under `python -m` that is the command line's own module, under a console script the
generated stub, which has neither. So the entry point names the command-line module there and
lends the stub its docstring, and `deeplab-jax-predict --help` shows what `python -m
deeplab_jax.predict --help` shows.
"""

import functools
import importlib
import sys

from absl import app

from deeplab_jax.parallel import xla_flags


def _run(module_name):
    xla_flags.apply()
    module = importlib.import_module(module_name)
    main = sys.modules.get("__main__")
    if main is not None and main is not module and not getattr(main, "__doc__", None):
        main.__doc__ = module.__doc__
    sys.argv[0] = module_name
    return module.run()


def run_command(define_flags, main):
    """Defines a command's flags and runs `main(argv)` under absl; its return value is the exit
    status (the commands' own `run()` applies the XLA flags first)."""
    define_flags()
    app.run(lambda argv: sys.exit(main(argv)))


# pyproject's [project.scripts] name these.
train = functools.partial(_run, "deeplab_jax.main")
evaluate = functools.partial(_run, "deeplab_jax.evaluate")
predict = functools.partial(_run, "deeplab_jax.predict")
export = functools.partial(_run, "deeplab_jax.export")
convert = functools.partial(_run, "deeplab_jax.weights.convert")
fetch = functools.partial(_run, "deeplab_jax.weights.fetch")
crf_tune = functools.partial(_run, "deeplab_jax.crf.tune")
