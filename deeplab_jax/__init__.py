"""DeepLab (v1, v2, v3, v3+) semantic segmentation in JAX/Flax.

Importing the package applies the CPU compiler settings measured to be faster for DeepLab's
convolutions (see `deeplab_jax.xla_flags`) before JAX initialises its backends.
"""

from deeplab_jax import xla_flags as _xla_flags

_xla_flags.apply()

__version__ = "0.1.0"
