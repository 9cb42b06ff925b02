"""The converted-checkpoint format: an orbax checkpoint of the variables + deeplab_model.json.

Written by `save_variables` (and `python -m deeplab_jax.weights.convert` / `.fetch`): DIR is an
orbax checkpoint of the variables dict, written with `ocp.StandardCheckpointer().save(DIR,
variables)`, plus DIR/deeplab_model.json = {"model", "num_classes", "overrides", "layout",
"source", "input", ...} so that the same model can be rebuilt (`load_model`; the fields are
described in `model_info`). `load_variables(path)` reads such a directory (or an .npz of '/'-joined
paths such as 'params/backbone/stem/conv1/conv/kernel') back as numpy arrays and refuses
non-finite values; `config.model.init_checkpoint` points at DIR. Paths may be URLs (gs://...):
every file operation goes through `etils.epath`.
"""

import json
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from deeplab_jax.finite import non_finite_leaves
from deeplab_jax.weights.mapping import WeightImportError, compile_patterns, flatten, unflatten

MODEL_INFO_FILE = "deeplab_model.json"
# How many tensor names an error lists.
_LISTED = 10


def save_variables(directory, variables, model_info=None):
    """Writes `variables` as an orbax checkpoint at `directory` (+ deeplab_model.json)."""
    directory = epath.Path(directory)
    if not _is_url(directory):
        directory = directory.absolute()
    if directory.exists():
        raise FileExistsError(
            f"{directory} already exists; choose a new --output directory (orbax never overwrites)")
    arrays = jax.tree.map(np.asarray, variables)
    check_finite(arrays, f"variables to save into {directory}")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory, arrays)
    checkpointer.wait_until_finished()
    checkpointer.close()
    if model_info is not None:
        (directory / MODEL_INFO_FILE).write_text(
            json.dumps(model_info, indent=2, default=_jsonable))


def _is_url(path):
    return "://" in str(path)


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def check_finite(variables, where):
    """Raises WeightImportError naming `where` and the tensors holding NaN or infinite values.

    `finite.non_finite_leaves` does the work: numpy arrays on the host, (sharded) jax arrays with
    one jitted reduction per tensor, so only one boolean per tensor leaves the device.
    """
    bad = non_finite_leaves(variables)
    if bad:
        listed = ", ".join(bad[:_LISTED]) + (f" and {len(bad) - _LISTED} more"
                                              if len(bad) > _LISTED else "")
        raise WeightImportError(
            f"{where}: {len(bad)} tensor(s) hold NaN or infinite values ({listed}); the file is "
            "corrupt or comes from a diverged training run, and is not used")


def load_variables(path):
    """Variables (nested dict of numpy arrays) from a converted checkpoint directory or an .npz.

    Pickled objects are never loaded (`np.load(allow_pickle=False)`; orbax stores no pickles), and
    non-finite values are an error naming the file.
    """
    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.name.endswith(".npz"):
        try:
            with path.open("rb") as f, np.load(f, allow_pickle=False) as data:
                variables = unflatten({name: np.asarray(data[name]) for name in data.files})
        except (OSError, ValueError, EOFError) as error:
            raise WeightImportError(
                f"{path}: not a readable .npz of numeric variables ({error}); object (pickled) "
                "arrays are refused") from None
    elif not path.is_dir():
        raise WeightImportError(
            f"{path}: expected an orbax checkpoint directory (from deeplab_jax.weights.convert) "
            "or an .npz file")
    else:
        variables = _restore_orbax(path)
    check_finite(variables, str(path))
    return variables


def _restore_orbax(path):
    checkpointer = ocp.StandardCheckpointer()
    try:
        restored = checkpointer.restore(path if _is_url(path) else path.absolute())
    except Exception as error:  # orbax raises many types for a broken directory
        raise WeightImportError(f"{path}: cannot restore the orbax checkpoint ({error})") from None
    finally:
        checkpointer.close()
    return jax.tree.map(np.asarray, restored)


def merge_into(target, source, what="params", reinitialise=()):
    """`target` (a tree of arrays) with every leaf that `source` has at the same path replaced.

    Used to start training from converted weights (config.model.init_checkpoint): leaves absent from
    `source` keep their fresh initialisation (e.g. a new classifier) and are logged. A leaf present
    with another shape, or a source leaf with no place in the model, is an error naming it, unless
    its path matches `reinitialise` ('head' or regexes over paths such as 'head/c0/kernel', here
    relative to `what`): such leaves (a classifier for another number of classes, another head)
    keep their fresh initialisation and are logged. A tensor whose rank differs is never a head of
    another shape and stays an error.
    """
    flat_target, flat_source = flatten(target), flatten(source)
    patterns = compile_patterns(reinitialise)

    def allowed(path):
        return any(p.search(f"{what}/{path}") or p.search(path) for p in patterns)

    mismatched, unused, reinitialised = [], [], []
    for path, value in flat_source.items():
        if path not in flat_target:
            (reinitialised if allowed(path) else unused).append(path)
            continue
        shape, expected = np.shape(value), np.shape(flat_target[path])
        if shape != expected:
            if allowed(path) and len(shape) == len(expected):
                reinitialised.append(f"{path} (file {shape}, model {expected})")
            else:
                mismatched.append(f"{path}: model {expected} vs file {shape}")
    if mismatched or unused:
        raise WeightImportError(
            f"{what}: the initial weights do not fit the model; shape mismatches: {mismatched}; "
            f"not in the model: {unused}")
    if reinitialised:
        logging.warning("%s: %d tensors of the initial weights do not fit the model (allowed: %s) "
                        "and are re-initialised: %s", what, len(reinitialised),
                        list(reinitialise), reinitialised)
    kept = sorted(set(flat_target) - set(flat_source))
    if kept:
        logging.info("%s: %d tensors not in the initial weights keep their initialisation: %s",
                     what, len(kept), kept[:_LISTED])
    fits = {path for path in flat_source
            if path in flat_target and np.shape(flat_source[path]) == np.shape(flat_target[path])}
    merged = {path: (np.asarray(flat_source[path], np.asarray(flat_target[path]).dtype)
                     if path in fits else flat_target[path]) for path in flat_target}
    return unflatten(merged)


def save_npz(path, variables):
    """Writes `variables` as an .npz of '/'-joined paths (readable by `load_variables`)."""
    with epath.Path(path).open("wb") as f:
        np.savez(f, **{name: np.asarray(v) for name, v in flatten(variables).items()})


def load_model_info(path):
    """The deeplab_model.json of a converted checkpoint (a dict), or None if it has none."""
    info_path = epath.Path(path) / MODEL_INFO_FILE
    if not info_path.is_file():
        return None
    try:
        return json.loads(info_path.read_text())
    except ValueError as error:
        raise WeightImportError(f"{info_path}: not valid JSON ({error})") from None


def select_classes(variables, channels, num_classes):
    """`variables` with the classifier's class axis (last axis of size `num_classes` under
    params/head) reduced to `channels`, e.g. the 171 used of COCO-Stuff's 182 label values."""
    channels = np.asarray(channels, np.int64)
    flat = flatten(variables)
    changed = 0
    for path, value in flat.items():
        if re.match(r"^params/head/", path) and np.shape(value)[-1:] == (num_classes,):
            flat[path] = np.ascontiguousarray(np.asarray(value)[..., channels])
            changed += 1
    if not changed:
        raise WeightImportError(
            f"no classifier tensor with {num_classes} classes under params/head")
    return unflatten(flat)
