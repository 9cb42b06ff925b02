r"""Converts published DeepLab weights into an orbax checkpoint for train/evaluate/predict.

    python -m deeplab_jax.weights.convert --source=caffe \
        --input=train2_iter_20000.caffemodel --model=deeplab_v2_resnet101_aspp_l \
        --num_classes=21 --output=/tmp/deeplab_v2_voc

    python -m deeplab_jax.weights.convert --source=torchvision --input=resnet101.pth \
        --model=deeplab_v2_resnet101_aspp_l --num_classes=21 --allow_missing=head \
        --output=/tmp/resnet101_init

--source: caffe (.caffemodel: DeepLab-v1 LargeFOV, DeepLab-v2 ResNet-101 MSC), kazuto (kazuto1011's
PyTorch v2 state dicts), torchvision (ImageNet ResNets, deeplabv3_resnet50/101), tf (TF
models/research/deeplab v3+ Xception-65 checkpoints; give the prefix, e.g. model.ckpt-30000).
--override=KEY=VALUE (repeatable) passes model overrides, e.g. --override=msc_scales=(1,0.75,0.5).
--dataset=NAME records the data set the classifier was trained on (class names and palette for
predict and evaluate). The output directory holds the orbax checkpoint and deeplab_model.json (the
model, the overrides it was built with including the source's layout, and the data set); see
`weights.model_info`. Published models download and convert in one step with
`python -m deeplab_jax.weights.fetch NAME --output=DIR`.
"""

import ast
import sys

from absl import app, flags

from deeplab_jax import cli, weights
from deeplab_jax.data import datasets
from deeplab_jax.parallel import xla_flags
from deeplab_jax.weights import model_info

FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_enum("source", None, list(weights.SOURCES), "Format of --input.")
    flags.DEFINE_string("input", None, "Weight file (.caffemodel, .pth/.pt, TF checkpoint prefix).")
    flags.DEFINE_string("model", None, "Registry model name (deeplab_jax.models.MODELS).")
    flags.DEFINE_integer("num_classes", None, "Number of classes of the model.")
    flags.DEFINE_string("output", None, "New directory for the orbax checkpoint.")
    flags.DEFINE_list("allow_missing", [], "'head' or regexes over our variable paths that may be "
                      "absent or mis-shaped in the file (kept freshly initialised).")
    flags.DEFINE_bool("strict", True, "Fail when the file holds tensors the model does not use.")
    flags.DEFINE_integer("seed", 0, "Seed of the fresh init of allowed-missing variables.")
    flags.DEFINE_multi_string("override", [], "Model override KEY=VALUE (Python literal values).")
    flags.DEFINE_enum("dataset", None, sorted(datasets.DATASETS),
                      "Data set the classifier was trained on (class names, palette).")
    for name in ("source", "input", "model", "num_classes", "output"):
        flags.mark_flag_as_required(name)


def parse_overrides(items):
    """['output_stride=16', 'input_norm=imagenet'] -> {'output_stride': 16, 'input_norm': ...}."""
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise app.UsageError(f"--override={item!r}: expected KEY=VALUE, e.g. output_stride=16")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare string such as imagenet
        overrides[key.strip()] = value
    return overrides


def convert_to_directory(source, path, model, num_classes, output, *, allow_missing=(),
                         strict=True, seed=0, dataset=None, overrides=None):
    """Imports the weight file and writes it as a converted checkpoint; returns the report.

    `output` must not exist. deeplab_model.json records the model, the overrides it was built with
    (including the source's layout), the layout, the source file and the data set.
    """
    overrides = dict(overrides or {})
    variables, report = weights.import_weights(
        source, path, model, num_classes, allow_missing=allow_missing, strict=strict, seed=seed,
        **overrides)
    names = None
    if dataset and datasets.DATASETS[dataset].num_classes == num_classes:
        names = list(datasets.DATASETS[dataset].class_names)
    info = model_info.make_model_info(model, num_classes, report.model_overrides, source, path,
                                      dataset=dataset, classes=names)
    weights.save_variables(output, variables, model_info=info)
    return report


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    overrides = parse_overrides(FLAGS.override)
    try:
        report = convert_to_directory(
            FLAGS.source, FLAGS.input, FLAGS.model, FLAGS.num_classes, FLAGS.output,
            allow_missing=FLAGS.allow_missing, strict=FLAGS.strict, seed=FLAGS.seed,
            dataset=FLAGS.dataset, overrides=overrides)
    except (weights.WeightImportError, ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"wrote {FLAGS.output} ({len(report.assigned)} tensors from the file)")
    return 0


def run():
    xla_flags.apply()  # before JAX starts its backends (importing modules does not start them)
    cli.run_command(_define_flags, main)


if __name__ == "__main__":
    run()
