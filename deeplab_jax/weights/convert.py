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
The output directory holds the orbax checkpoint and deeplab_model.json (model name, classes and
the overrides it was built with, including the source's layout defaults); see `weights.__init__`.
"""

import ast
import sys

from absl import app, flags

from deeplab_jax import weights

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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    overrides = parse_overrides(FLAGS.override)
    try:
        variables, report = weights.import_weights(
            FLAGS.source, FLAGS.input, FLAGS.model, FLAGS.num_classes,
            allow_missing=FLAGS.allow_missing, strict=FLAGS.strict, seed=FLAGS.seed, **overrides)
    except (weights.WeightImportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    info = dict(model=FLAGS.model, num_classes=FLAGS.num_classes,
                overrides=report.model_overrides, source=FLAGS.source, input=FLAGS.input)
    try:
        weights.save_variables(FLAGS.output, variables, model_info=info)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {FLAGS.output} ({len(report.assigned)} tensors from the file)")
    return 0


def run():
    _define_flags()
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
