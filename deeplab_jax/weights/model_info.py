"""What deeplab_model.json says about converted weights: the model, its layout, its classes.

deeplab_model.json (written beside the orbax checkpoint by convert and fetch) holds:
  model, num_classes, overrides   the registry model exactly as it was built for the file
  layout                          the overrides the weights need to compute what they were trained
                                  to compute (LAYOUT_KEYS), resolved to values
  source, input                   the importer ('caffe', 'kazuto', 'torchvision', 'tf') and file/URL
  dataset, classes                the data set (a key of deeplab_jax.data.datasets) and class names
  sha256, published, zoo          fetched weights: the file's checksum, the published mIoU, the
                                  zoo entry's name

Layout vs recipe. The layout is what a network's weights are tied to: the input normalisation
(ImageNet mean/std RGB for torchvision, BGR mean subtraction for the Caffe releases, [-1, 1] for
the TF releases), where a ResNet strides (torchvision: the 3x3 conv; Caffe/MSRA: the 1x1 reduce
conv), floor or ceil pooling, the BatchNorm epsilon, and layers whose parameters exist only in
that layout (torchvision's extra 3x3 conv before the classifier). Output stride, multi-grid and
multi-scale inputs are recipe choices under which the same weights stay valid (the v3 paper, §4.3,
trains at output stride 16 and evaluates at 8 with the same weights), so they are not layout.
`adopt_layout(config, info)` gives a training config the file's layout.
"""

import copy

from absl import logging

from deeplab_jax import models
from deeplab_jax.config.model_overrides import model_defaults
from deeplab_jax.data import datasets, palettes
from deeplab_jax.weights.format import load_model_info, load_variables
from deeplab_jax.weights.mapping import WeightImportError

LAYOUT_KEYS = ("input_norm", "stride_on_3x3", "pool_ceil_mode", "bn_epsilon", "extra_conv3x3")


def _plain(value):
    """JSON values back to the Python values the model factories take (lists -> tuples)."""
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def overrides_of(info):
    return {key: _plain(value) for key, value in (info.get("overrides") or {}).items()}


def resolve_layout(model_name, overrides):
    """{key: value} of LAYOUT_KEYS for `model_name` built with `overrides` (defaults filled in)."""
    defaults = model_defaults(model_name)
    return {key: _plain(overrides.get(key, defaults[key])) for key in LAYOUT_KEYS
            if key in defaults}


def layout_of(info):
    """The layout recorded in a model info (derived from model + overrides for older files)."""
    if "layout" in info:
        return {key: _plain(value) for key, value in info["layout"].items()}
    return resolve_layout(info["model"], overrides_of(info))


def make_model_info(model, num_classes, overrides, source, input_path, **extra):
    """The deeplab_model.json dict of weights converted into `model` built with `overrides`."""
    info = dict(model=model, num_classes=int(num_classes), overrides=dict(overrides),
                layout=resolve_layout(model, dict(overrides)), source=source,
                input=str(input_path))
    info.update({key: value for key, value in extra.items() if value is not None})
    return info


def read_model_info(path):
    """The model info of converted weights at `path`; an error when there is none."""
    info = load_model_info(path)
    if info is None:
        raise WeightImportError(
            f"{path} has no deeplab_model.json: it is not a directory written by "
            "deeplab_jax.weights.convert or .fetch (build the model yourself and call "
            "weights.load_variables)")
    for key in ("model", "num_classes"):
        if key not in info:
            raise WeightImportError(f"{path}/deeplab_model.json has no {key!r}")
    return info


def build_model(info, **changes):
    """The registry model of `info`; `changes` (e.g. output_stride for evaluation) are applied
    where the model accepts them."""
    name = info["model"]
    if name not in models.MODELS:
        raise WeightImportError(f"deeplab_model.json names the model {name!r}, which this version "
                                f"of deeplab_jax does not have")
    accepted = set(models.accepted_overrides(name))
    overrides = overrides_of(info)
    overrides.update({key: value for key, value in changes.items() if key in accepted})
    return models.get_model(name, int(info["num_classes"]), **overrides)


def load_model(path, **changes):
    """(model, variables) of a converted checkpoint directory, rebuilt from its model info."""
    info = read_model_info(path)
    return build_model(info, **changes), load_variables(path)


def descriptor_of(info):
    """The data set descriptor named by `info` ('dataset'), or None when it names none we know."""
    name = info.get("dataset")
    return datasets.DATASETS.get(name) if name else None


def class_names(info):
    """Class names of the weights: recorded ones, else the data set's, else class_0, ..."""
    if info.get("classes"):
        return tuple(info["classes"])
    descriptor = descriptor_of(info)
    if descriptor is not None and descriptor.num_classes == info["num_classes"]:
        return descriptor.class_names
    return tuple(f"class_{i}" for i in range(int(info["num_classes"])))


def palette(info):
    """The data set's colours (256 x 3), or the VOC palette when the info names no data set."""
    descriptor = descriptor_of(info)
    if descriptor is not None and descriptor.palette is not None:
        return descriptor.palette
    return palettes.voc_palette()


def adopt_layout(config, info, where):
    """A copy of the training `config` whose model overrides carry the layout of `info`.

    `where` names the weights in messages (e.g. 'config.model.init_checkpoint=DIR').
    For each layout field the config's model takes: the config's value if it equals the file's;
    else the file's value, adopted and logged, when the config leaves the model's default; else
    (the config asks explicitly for another value than both the default and the file) a
    ValueError naming the fields, since the weights would silently compute something else.
    """
    layout = layout_of(info)
    defaults = model_defaults(config.model.name)
    configured = {key: _plain(value) for key, value in config.model.overrides.to_dict().items()}
    adopted, conflicts = {}, []
    for key, value in layout.items():
        if key not in defaults:
            continue  # the config's model has no such field (e.g. a VGG net has no stride_on_3x3)
        current = configured.get(key, defaults[key])
        if current == value:
            continue
        if current != defaults[key]:
            conflicts.append(f"{key}={current!r} (the weights need {value!r})")
        else:
            adopted[key] = value
    if conflicts:
        raise ValueError(
            f"{where}: the weights were trained in another layout than the config asks for: "
            f"{', '.join(conflicts)}. Drop these --config.model.overrides (the weights' layout "
            "is then adopted) or use other weights")
    if not adopted:
        return config
    logging.info("%s: adopting the weights' layout %s", where, adopted)
    config = copy.deepcopy(config)
    with config.unlocked():
        for key, value in adopted.items():
            config.model.overrides[key] = value
    return config
