"""The configuration schema (`base`) and model overrides as config fields (`model_overrides`).

Every file in configs/ does `config = base_config()`, sets its data set, model and recipe, and
lists the model's overrides with `overrides_config(name, **changes)`.
"""

from deeplab_jax.config.base import base_config
from deeplab_jax.config.model_overrides import effective_overrides, overrides_config

__all__ = ["base_config", "effective_overrides", "overrides_config"]
