"""DeepLab (v1, v2, v3, v3+) semantic segmentation in JAX/Flax.

Stages, each a subpackage, dependencies pointing down this list: `data` (descriptors, TFDS
builders, grain pipelines), `models` (Flax modules and the registry), `crf` (dense CRF), `parallel`
(XLA flags, multi-host start-up, mesh, parameter sharding), `losses`, `config` (schema), then
`experiment` (config -> data set, model, sizes), `train`, `inference` (test-time modes),
`evaluation`, `serving` (predictor, export, pictures) and `weights` (importers, zoo). `main`, `evaluate` and
`predict` are the command lines.

Importing the package has no side effects; command-line entry points apply the XLA CPU flags
(`deeplab_jax.parallel.xla_flags`) before JAX starts.
"""

__version__ = "0.1.0"
