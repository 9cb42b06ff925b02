"""Model overrides as config fields: `--config.model.overrides.<name>=` on a locked config.

A locked ml_collections config rejects fields it does not have (that is what catches typos), so a
config file lists every keyword its model factory accepts, with the factory's defaults:
`config.model.overrides = overrides_config('deeplab_v2_demo', widths=(24, 48, 96, 192))`. When the
model is built, only values that differ from the named model's defaults are passed on, so
switching `--config.model.name` keeps working for fields the new model also accepts.
"""

import jax.numpy as jnp
import ml_collections
import numpy as np

from deeplab_jax.models import override_defaults


def model_defaults(name: str) -> dict:
    """Every keyword override of the registered model `name`, with its default value."""
    return {key: _to_config_value(value) for key, value in override_defaults(name).items()}


def _to_config_value(value):
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, (str, bool, int, float, tuple, type(None))):
        return value
    try:
        return np.dtype(value).name  # jnp.float32 -> 'float32': config files hold plain values
    except TypeError:
        return value


def overrides_config(name: str, **changes) -> ml_collections.ConfigDict:
    """A ConfigDict of all of `name`'s overrides (defaults), with `changes` applied."""
    values = model_defaults(name)
    unknown = sorted(set(changes) - set(values))
    if unknown:
        raise ValueError(f"model {name!r} has no override(s) {unknown}; it accepts "
                         f"{', '.join(sorted(values))}")
    values.update({k: _to_config_value(v) for k, v in changes.items()})
    return ml_collections.ConfigDict(values)


def effective_overrides(name: str, overrides: dict) -> dict:
    """The overrides to pass to `get_model(name, ...)`: values differing from name's defaults."""
    defaults = model_defaults(name)
    result = {}
    for key, value in overrides.items():
        value = tuple(value) if isinstance(value, list) else value
        if key in defaults and defaults[key] == value:
            continue
        result[key] = jnp.dtype(value) if key == "dtype" and isinstance(value, str) else value
    return result
