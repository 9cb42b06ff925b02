"""Starting training from converted published weights (config.model.init_checkpoint).

The papers initialise from ImageNet-pretrained networks (DeepLab-v2 §4.1.2; v3 §4.1; v3+ §4) or
from a model trained on MS-COCO; `deeplab_jax.weights.convert` / `.fetch` turn those releases into
converted checkpoints. Two steps use one:

  config = init_weights.adopt_layout(config)   # before the model is built
  state = init_weights.load_into(state, config.model.init_checkpoint, shardings)

`adopt_layout` gives the training model the layout the weights were trained in (input
normalisation, stride placement, pooling mode, ...: `weights.model_info`), so that torchvision
ResNets are not fed Caffe BGR input; `load_into` copies every matching tensor into the fresh state
and re-initialises a head of another shape (another number of classes, another head).
"""

import jax
from absl import logging

from deeplab_jax import weights
from deeplab_jax.train import run_config
from deeplab_jax.weights import model_info

# Variables that may be re-initialised when the file's differ: the classifier / decoder head.
REINITIALISED = ("^head/",)


def adopt_layout(config):
    """`config`, or a copy whose model overrides carry the layout of config.model.init_checkpoint.

    A checkpoint without deeplab_model.json (an .npz, a plain orbax directory) carries no layout:
    the config is returned unchanged. A config that explicitly asks for another layout than the
    weights' is a ValueError naming the fields.
    """
    path = config.model.get("init_checkpoint", "")
    if not path:
        return config
    info = weights.load_model_info(path)
    if info is None:
        logging.info("config.model.init_checkpoint=%s has no deeplab_model.json: its layout is "
                     "taken to be the config's", path)
        return config
    return model_info.adopt_layout(config, info, f"config.model.init_checkpoint={path}")


def adopt_run_layout(config, workdir):
    """`config` with the layout a training run in `workdir` was trained with (its config.json).

    Evaluating, predicting or exporting a run's checkpoints with a config that leaves the layout
    at the model's defaults then builds the model the run trained, even when the run adopted the
    layout of its init_checkpoint and the command line does not repeat that flag. A run without
    config.json leaves the config unchanged.
    """
    saved = run_config.read(workdir)
    if saved is None:
        return config
    try:
        model = saved["model"]
        info = {"model": model["name"], "overrides": model.get("overrides") or {}}
        if info["model"] != config.model.name:
            return config  # another model: its checkpoints will not restore anyway
        info["layout"] = model_info.resolve_layout(info["model"], model_info.overrides_of(info))
    except (ValueError, KeyError, TypeError) as error:
        logging.warning("%s/%s: unreadable (%s); using the config's layout", workdir,
                        run_config.FILE_NAME, error)
        return config
    return model_info.adopt_layout(config, info, f"the run in {workdir}")


def load_into(state, path, state_shardings):
    """`state` with every matching parameter and BatchNorm statistic replaced from `path`.

    Head tensors of another shape (or absent from the model) keep their fresh initialisation and
    are logged; any other mismatch is a WeightImportError naming the tensors.
    """
    variables = weights.load_variables(path)
    params = weights.merge_into(state.params, variables.get("params", {}),
                                reinitialise=REINITIALISED)
    batch_stats = weights.merge_into(state.batch_stats, variables.get("batch_stats", {}),
                                     what="batch_stats", reinitialise=REINITIALISED)
    state = state.replace(params=params, batch_stats=batch_stats)
    return jax.device_put(state, state_shardings)
