"""<workdir>/config.json: the config of the run whose checkpoints the workdir holds.

It is written once the run knows it will train in that workdir (a fresh start, or a resume whose
checkpoint restored), never before: a second command with other settings that cannot resume the
checkpoints (another model, other widths, another optimiser) fails without overwriting the record
of the run that wrote them, which evaluation and prediction read (`init_weights.adopt_run_layout`).
When such a command fails, `explain` adds the fields in which its config differs from the saved
one to the checkpoint error, so the message says what changed, not only which arrays differ.
"""

import json

import jax
from absl import logging

from deeplab_jax import storage

FILE_NAME = "config.json"
_LISTED = 6  # differing fields named in an error; the rest are counted


def write(config, workdir):
    """Writes `config` as <workdir>/config.json (process 0; atomic, so readers see a whole file)."""
    if jax.process_index() == 0:
        path = storage.as_path(workdir) / FILE_NAME
        try:
            storage.write_atomic(path, config.to_json_best_effort(indent=2))
        except OSError as error:
            storage.raise_if_disk_full(error, "the config", path)
            raise


def read(workdir):
    """The saved config as a dict, or None when there is none or it cannot be parsed."""
    path = storage.as_path(workdir) / FILE_NAME
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError) as error:
        logging.warning("%s: unreadable (%s)", path, error)
        return None


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(saved: dict, config) -> list:
    """'field: <saved> there, <now> here' for each field that differs, model and data set first."""
    now = _flatten(json.loads(config.to_json_best_effort()))
    before = _flatten(saved)
    missing = object()
    changed = [key for key in sorted(set(now) | set(before))
               if now.get(key, missing) != before.get(key, missing)]  # sorted, then stably:
    changed.sort(key=lambda key: (not key.startswith("model."), not key.startswith("dataset.")))

    def shown(values, key):
        return json.dumps(values[key]) if key in values else "absent"

    return [f"{key}: {shown(before, key)} there, {shown(now, key)} here" for key in changed]


def explain(error, workdir, config):
    """`error`'s message, plus how `config` differs from the workdir's config.json (if at all)."""
    saved = read(workdir)
    changed = differences(saved, config) if saved is not None else []
    if not changed:
        return str(error)
    more = len(changed) - _LISTED
    listed = "; ".join(changed[:_LISTED]) + (f"; and {more} more" if more > 0 else "")
    return (f"{error}. The run that wrote them ({storage.as_path(workdir) / FILE_NAME}) differs "
            f"from this config in: {listed}. Use the settings it was trained with, or another "
            "--workdir for a new run")
