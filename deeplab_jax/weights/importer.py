"""Reading published weight files into a registry model's variables (`convert`, `import_weights`).

`convert(source, path, model_name, num_classes, **model_overrides)` builds the registry model,
reads the file (`caffe`: .caffemodel, v1 LargeFOV / v2 ResNet MSC; `kazuto`: kazuto1011's PyTorch
v2 state dicts; `torchvision`: ImageNet ResNets and DeepLabV3; `tf`: TF models/research/deeplab
checkpoints), checks every name and shape, and returns {'params', 'batch_stats'} as float32 numpy
arrays. Problems raise `WeightImportError` listing every missing, unused and mis-shaped tensor;
`allow_missing=('head',)` keeps a freshly initialised head (another number of classes, or an
ImageNet backbone) and `strict=False` tolerates unused tensors. `import_weights` also returns the
`ImportReport`, whose `model_overrides` record the layout the file was trained with.
"""


import os

import jax
import jax.numpy as jnp

from deeplab_jax import models
from deeplab_jax.weights import caffe, tf_import, torch_import
from deeplab_jax.weights.mapping import WeightImportError, fill_variables, flatten

SOURCES = ("caffe", "kazuto", "torchvision", "tf")
# Layout of the models each source was trained with, applied unless the caller overrides them
# (and only those the model accepts): torchvision ResNets put the stride on the 3x3 conv, pool in
# floor mode and take ImageNet input; its DeepLabV3 models run at output stride 8 without
# multi-grid and have a 3x3 conv + BN between ASPP and classifier.
SOURCE_DEFAULT_OVERRIDES = {
    # kazuto1011's port keeps the Caffe network but resizes its MSC branches the PyTorch way.
    "kazuto": dict(resize_convention="pytorch"),
    "torchvision": dict(stride_on_3x3=True, pool_ceil_mode=False, input_norm="imagenet"),
    "torchvision_segmentation": dict(output_stride=8, multi_grid=(), extra_conv3x3=True),
}
# Square input used to trace the model for its variable shapes (any size works).
_TRACE_SIZE = 33


def model_overrides_for(layouts, model_name, overrides):
    """`overrides` plus the layout defaults of `layouts` that the model accepts (caller wins)."""
    accepted = set(models.accepted_overrides(model_name))
    defaults = {}
    for layout in layouts:
        defaults.update(SOURCE_DEFAULT_OVERRIDES.get(layout, {}))
    defaults = {k: v for k, v in defaults.items() if k in accepted}
    return {**defaults, **overrides}


def _init_fn(model, seed):
    """init(paths=None): the model's freshly initialised variables, as a nested dict, or only those
    at `paths` ('params/head/...'), flattened. Asked for a few paths (a new head on an ImageNet
    backbone), XLA drops every other initialiser and the forward pass from the compiled program:
    converting torchvision's ResNet-101 took 49 s on 2 cores when all 44M parameters were drawn
    to keep the head's, and the head's values are the same either way (each parameter's key
    depends only on its path)."""

    def init(paths=None):
        # The RngBitGenerator key compiles 3-4x faster than threefry for the dozens of parameter
        # initialisers of a ResNet (measured: 8-12 s against 32 s for a tiny ResNet on 2 cores).
        key = jax.random.key(seed, impl="rbg")
        images = jnp.zeros((1, _TRACE_SIZE, _TRACE_SIZE, 3), jnp.float32)

        def variables(k):
            tree = model.init({"params": k, "dropout": k}, images, train=False)
            if paths is None:
                return tree
            flat = flatten(tree)
            return {path: flat[path] for path in paths if path in flat}

        return jax.jit(variables)(key)

    return init


def read_weights(source, path):
    """(assignments, ignored, unused, bn_epsilons, layouts) of a weight file.

    layouts: names in SOURCE_DEFAULT_OVERRIDES describing the network the file was trained as.
    """
    if source == "caffe":
        return (*caffe.read_caffe(path), ())
    if source in ("kazuto", "torchvision"):
        state = torch_import.load_state_dict(path)
        if source == "kazuto":
            return (*torch_import.kazuto_assignments(state), set(), ("kazuto",))
        layouts = ("torchvision",)
        if any(name.startswith("classifier.") for name in state):
            layouts += ("torchvision_segmentation",)
        return (*torch_import.torchvision_assignments(
            state, head_assignments=torch_import.torchvision_v3_head_assignments), set(), layouts)
    if source == "tf":
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
