"""Import of published DeepLab weights (Caffe, PyTorch, TF) and the converted-checkpoint format.

    from deeplab_jax import weights
    variables = weights.convert("caffe", "train2_iter_20000.caffemodel",
                                "deeplab_v2_resnet101_aspp_l", 21)
    logits = model.apply(variables, images, train=False)

`convert(source, path, model_name, num_classes, **model_overrides)` builds the registry model,
reads the file (`caffe`: .caffemodel, v1 LargeFOV / v2 ResNet MSC; `kazuto`: kazuto1011's PyTorch
v2 state dicts; `torchvision`: ImageNet ResNets and DeepLabV3; `tf`: TF models/research/deeplab
checkpoints), checks every name and shape, and returns {'params', 'batch_stats'} as float32 numpy
arrays. Problems raise `WeightImportError` listing every missing, unused and mis-shaped tensor;
`allow_missing=('head',)` keeps a freshly initialised head (another number of classes, or an
ImageNet backbone) and `strict=False` tolerates unused tensors. `import_weights` also returns the
`ImportReport`.

Checkpoint format (written by `save_variables` and `python -m deeplab_jax.weights.convert`): DIR is
an orbax checkpoint of the variables dict, written with `ocp.StandardCheckpointer().save(DIR,
variables)`, plus DIR/deeplab_model.json = {"model", "num_classes", "overrides", "source", "input"}
so that the same model can be rebuilt (`load_model`). `load_variables(path)` reads such a directory
(or an .npz of '/'-joined paths such as 'params/backbone/stem/conv1/conv/kernel') back as numpy
arrays; `config.model.init_checkpoint` points at DIR.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from deeplab_jax.weights.mapping import (
    ImportReport,
    WeightImportError,
    fill_variables,
    flatten,
    unflatten,
)

SOURCES = ("caffe", "kazuto", "torchvision", "tf")
MODEL_INFO_FILE = "deeplab_model.json"
# Layout of the models each source was trained with, applied unless the caller overrides them
# (and only those the model accepts): torchvision ResNets put the stride on the 3x3 conv, pool in
# floor mode and take ImageNet input; its DeepLabV3 models run at output stride 8 without
# multi-grid and have a 3x3 conv + BN between ASPP and classifier.
SOURCE_DEFAULT_OVERRIDES = {
    "torchvision": dict(stride_on_3x3=True, pool_ceil_mode=False, input_norm="imagenet"),
    "torchvision_segmentation": dict(output_stride=8, multi_grid=(), extra_conv3x3=True),
}
# Square input used to trace the model for its variable shapes (any size works).
_TRACE_SIZE = 33


def model_overrides_for(layouts, model_name, overrides):
    """`overrides` plus the layout defaults of `layouts` that the model accepts (caller wins)."""
    from deeplab_jax import models

    accepted = set(models.accepted_overrides(model_name))
    defaults = {}
    for layout in layouts:
        defaults.update(SOURCE_DEFAULT_OVERRIDES.get(layout, {}))
    defaults = {k: v for k, v in defaults.items() if k in accepted}
    return {**defaults, **overrides}


def _init_fn(model, seed):
    def init():
        # The RngBitGenerator key compiles 3-4x faster than threefry for the dozens of parameter
        # initialisers of a ResNet (measured: 8-12 s against 32 s for a tiny ResNet on 2 cores).
        key = jax.random.key(seed, impl="rbg")
        images = jnp.zeros((1, _TRACE_SIZE, _TRACE_SIZE, 3), jnp.float32)
        return jax.jit(lambda k: model.init({"params": k, "dropout": k}, images, train=False))(key)

    return init


def read_weights(source, path):
    """(assignments, ignored, unused, bn_epsilons, layouts) of a weight file.

    layouts: names in SOURCE_DEFAULT_OVERRIDES describing the network the file was trained as.
    """
    if source == "caffe":
        from deeplab_jax.weights import caffe

        return (*caffe.read_caffe(path), ())
    if source in ("kazuto", "torchvision"):
        from deeplab_jax.weights import torch_import

        state = torch_import.load_state_dict(path)
        if source == "kazuto":
            return (*torch_import.kazuto_assignments(state), set(), ())
        layouts = ("torchvision",)
        if any(name.startswith("classifier.") for name in state):
            layouts += ("torchvision_segmentation",)
        return (*torch_import.torchvision_assignments(
            state, head_assignments=torch_import.torchvision_v3_head_assignments), set(), layouts)
    if source == "tf":
        from deeplab_jax.weights import tf_import

        return (*tf_import.read_tf(path), set(), ("tf",))
    raise ValueError(f"source={source!r} is unknown; use one of {SOURCES}")


def _check_bn_epsilon(model, epsilons, path):
    norm = getattr(getattr(model, "backbone", None), "norm", None)
    model_eps = getattr(norm, "epsilon", None)
    if model_eps is None:
        return
    different = sorted(e for e in epsilons if abs(e - model_eps) > 1e-3 * model_eps)
    if different:
        raise WeightImportError(
            f"{path}: its BatchNorm layers use eps {different} but the model uses {model_eps}; "
            f"build the model with bn_epsilon={different[0]}"
        )


def import_weights(
    source, path, model_name, num_classes, *, allow_missing=(), strict=True, seed=0,
    **model_overrides,
):
    """(variables, ImportReport): see `convert`."""
    from deeplab_jax import models

    if source not in SOURCES:
        raise ValueError(f"source={source!r} is unknown; use one of {SOURCES}")
    path = os.fspath(path)
    if not os.path.exists(path) and not (source == "tf" and _tf_checkpoint_exists(path)):
        raise WeightImportError(f"weight file {path} does not exist")
    assignments, ignored, unused, epsilons, layouts = read_weights(source, path)
    overrides = model_overrides_for(layouts, model_name, model_overrides)
    model = models.get_model(model_name, num_classes, **overrides)
    _check_bn_epsilon(model, epsilons, path)
    init = _init_fn(model, seed)
    template = jax.eval_shape(init)
    variables, report = fill_variables(
        template, assignments, ignored, unused, file=path, model_name=model_name,
        allow_missing=allow_missing, strict=strict, init_fn=init,
    )
    report.model_overrides = overrides
    return variables, report


def convert(source, path, model_name, num_classes, *, allow_missing=(), strict=True, seed=0,
            **model_overrides):
    """Variables {'params', 'batch_stats'} of `model_name` read from a published weight file.

    source: 'caffe', 'kazuto', 'torchvision' or 'tf'. model_overrides go to
    `models.get_model` (plus the source's layout defaults, `SOURCE_DEFAULT_OVERRIDES`).
    allow_missing: 'head' or regexes over our paths that may be absent or mis-shaped in the file
    (kept freshly initialised with `seed`). strict=False: unused file tensors do not raise.
    """
    variables, _ = import_weights(
        source, path, model_name, num_classes, allow_missing=allow_missing, strict=strict,
        seed=seed, **model_overrides)
    return variables


def _tf_checkpoint_exists(prefix):
    return os.path.exists(prefix + ".index")


# ------------------------------------------------------------------------- checkpoint format


def save_variables(directory, variables, model_info=None):
    """Writes `variables` as an orbax checkpoint at `directory` (+ deeplab_model.json)."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory):
        raise FileExistsError(
            f"{directory} already exists; choose a new --output directory (orbax never overwrites)")
    arrays = jax.tree.map(np.asarray, variables)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory, arrays)
    checkpointer.wait_until_finished()
    checkpointer.close()
    if model_info is not None:
        with open(os.path.join(directory, MODEL_INFO_FILE), "w") as f:
            json.dump(model_info, f, indent=2, default=_jsonable)


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def load_variables(path):
    """Variables (nested dict of numpy arrays) from a converted checkpoint directory or an .npz."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                return unflatten({name: np.asarray(data[name]) for name in data.files})
        except (OSError, ValueError) as error:
            raise WeightImportError(f"{path}: not a readable .npz of variables ({error})") from None
    if not os.path.isdir(path):
        raise WeightImportError(
            f"{path}: expected an orbax checkpoint directory (from deeplab_jax.weights.convert) "
            "or an .npz file")
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    try:
        restored = checkpointer.restore(os.path.abspath(path))
    except Exception as error:  # orbax raises many types for a broken directory
        raise WeightImportError(f"{path}: cannot restore the orbax checkpoint ({error})") from None
    finally:
        checkpointer.close()
    return jax.tree.map(np.asarray, restored)


def merge_into(target, source, what="params"):
    """`target` (a tree of arrays) with every leaf that `source` has at the same path replaced.

    Used to start training from converted weights (config.model.init_checkpoint): leaves absent from
    `source` keep their fresh initialisation (e.g. a new classifier) and are logged; a leaf present
    with another shape, or a source leaf with no place in the model, is an error naming it.
    """
    from absl import logging

    flat_target, flat_source = flatten(target), flatten(source)
    mismatched = [f"{path}: model {np.shape(flat_target[path])} vs file {np.shape(value)}"
                  for path, value in flat_source.items()
                  if path in flat_target and np.shape(flat_target[path]) != np.shape(value)]
    unused = sorted(set(flat_source) - set(flat_target))
    if mismatched or unused:
        raise WeightImportError(
            f"{what}: the initial weights do not fit the model; shape mismatches: {mismatched}; "
            f"not in the model: {unused}")
    kept = sorted(set(flat_target) - set(flat_source))
    if kept:
        logging.info("%s: %d tensors not in the initial weights keep their initialisation: %s",
                     what, len(kept), kept[:10])
    merged = {path: (np.asarray(flat_source[path], np.asarray(flat_target[path]).dtype)
                     if path in flat_source else flat_target[path]) for path in flat_target}
    return unflatten(merged)


def save_npz(path, variables):
    """Writes `variables` as an .npz of '/'-joined paths (readable by `load_variables`)."""
    np.savez(path, **{name: np.asarray(v) for name, v in flatten(variables).items()})


def load_model_info(path):
    """The deeplab_model.json of a converted checkpoint (a dict), or None if it has none."""
    info_path = os.path.join(os.fspath(path), MODEL_INFO_FILE)
    if not os.path.isfile(info_path):
        return None
    with open(info_path) as f:
        return json.load(f)


def load_model(path):
    """(model, variables) of a converted checkpoint directory, rebuilt from its model info."""
    from deeplab_jax import models

    info = load_model_info(path)
    if info is None:
        raise WeightImportError(f"{path} has no {MODEL_INFO_FILE}; build the model yourself and "
                                "call load_variables")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in info["overrides"].items()}
    model = models.get_model(info["model"], info["num_classes"], **overrides)
    return model, load_variables(path)


__all__ = [
    "SOURCES",
    "ImportReport",
    "WeightImportError",
    "convert",
    "import_weights",
    "load_model",
    "load_model_info",
    "load_variables",
    "merge_into",
    "save_npz",
    "save_variables",
]
