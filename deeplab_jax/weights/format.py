"""The converted-checkpoint format: an orbax checkpoint of the variables + deeplab_model.json.

Written by `save_variables` (and `python -m deeplab_jax.weights.convert`): DIR is an orbax
checkpoint of the variables dict, written with `ocp.StandardCheckpointer().save(DIR, variables)`,
plus DIR/deeplab_model.json = {"model", "num_classes", "overrides", "source", "input"} so that the
same model can be rebuilt (`load_model`). `load_variables(path)` reads such a directory (or an .npz
of '/'-joined paths such as 'params/backbone/stem/conv1/conv/kernel') back as numpy arrays;
`config.model.init_checkpoint` points at DIR.
"""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from deeplab_jax import models
from deeplab_jax.weights.mapping import WeightImportError, flatten, unflatten

MODEL_INFO_FILE = "deeplab_model.json"

def save_variables(directory, variables, model_info=None):
    """Writes `variables` as an orbax checkpoint at `directory` (+ deeplab_model.json)."""
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
    info = load_model_info(path)
    if info is None:
        raise WeightImportError(f"{path} has no {MODEL_INFO_FILE}; build the model yourself and "
                                "call load_variables")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in info["overrides"].items()}
    model = models.get_model(info["model"], info["num_classes"], **overrides)
    return model, load_variables(path)
