"""<workdir>/config.json: the config of the run whose checkpoints the workdir holds.

It is written once the run knows it will train in that workdir (a fresh start, or a resume whose
checkpoint restored), never before: a second command with other settings that cannot resume the
checkpoints (another model, other widths, another optimiser) fails without overwriting the record
of the run that wrote them, which evaluation and prediction read (`init_weights.adopt_run_layout`).
When such a command fails, `explain` adds the fields in which its config differs from the saved
one to the checkpoint error, so the message says what changed, not only which arrays differ.

Settings that leave the checkpoint readable may change on a resume, and often do: more steps
(which also stretches the poly learning-rate schedule, so the learning rate jumps up from where
the shorter run had brought it), another learning rate, another evaluation. `record` then warns
with the fields that changed, and keeps the old record as config_until_step_<N>.json before
config.json takes the new settings, so the workdir still says how its first N steps were trained.
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
        _write_text(storage.as_path(workdir) / FILE_NAME, config.to_json_best_effort(indent=2),
                    "the config")


def _write_text(path, text, what):
    try:
        storage.write_atomic(path, text)
    except OSError as error:
        storage.raise_if_disk_full(error, what, path)
        raise


def record(config, workdir, resumed_step=0):
    """Writes config.json for a run starting fresh (`resumed_step` 0) or resuming that step; on a
    resume with changed settings, first warns and keeps the old file (see the module docstring)."""
    saved = read(workdir) if resumed_step else None
    changed = differences(saved, config) if saved is not None else []
    if changed and jax.process_index() == 0:
        kept = storage.as_path(workdir) / f"config_until_step_{resumed_step}.json"
        _write_text(kept, json.dumps(saved, indent=2), "the previous config")
        logging.warning("resuming at step %d with settings that differ from the run's %s: %s. "
                        "From here on the run follows them%s; the previous settings are kept in "
                        "%s", resumed_step, FILE_NAME, _listed(changed),
                        " (num_steps also sets the learning-rate schedule)"
                        if any(c.startswith("num_steps:") for c in changed) else "", kept)
    write(config, workdir)


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
    return (f"{error}. The run that wrote them ({storage.as_path(workdir) / FILE_NAME}) differs "
            f"from this config in: {_listed(changed)}. Use the settings it was trained with, or "
            "another --workdir for a new run")


def _listed(changed):
    more = len(changed) - _LISTED
    return "; ".join(changed[:_LISTED]) + (f"; and {more} more" if more > 0 else "")
