"""What training, evaluation and prediction build from a config: data set, sources, model.

    descriptor = experiment.dataset_descriptor(config)         # classes, ignore label, sizes
    source = experiment.load_source(config, descriptor, descriptor.eval_split)
    model = experiment.create_model(config, descriptor, for_eval=True)

Kept apart from the training code so that evaluation and serving build the same objects without
importing anything of training.
"""

import dataclasses

from deeplab_jax.config import effective_overrides
from deeplab_jax.data import datasets, sources
from deeplab_jax.models import get_model, layers


def dataset_descriptor(config) -> datasets.DatasetDescriptor:
    """The config's data set descriptor, with the config's split / builder overrides applied."""
    descriptor = datasets.get_dataset(config.dataset.name, config.dataset.manual_dir or None)
    changes = {}
    if config.dataset.tfds_name:
        changes["tfds_name"] = config.dataset.tfds_name
    if config.dataset.train_split:
        changes["train_split"] = config.dataset.train_split
    if config.dataset.eval_split:
        changes["eval_split"] = config.dataset.eval_split
    return dataclasses.replace(descriptor, **changes) if changes else descriptor


def load_source(config, descriptor, split):
    """Random-access examples of one split, building the data set first if needed."""
    return sources.load_split(descriptor, split, config.dataset.data_dir or None,
                              config.dataset.manual_dir or None, skip_bad=config.dataset.skip_bad,
                              full_data=config.dataset.full_data)


def model_overrides(config) -> dict:
    """Factory overrides that differ from the model's defaults; remat=True + config.model.
    remat_policy -> remat=<policy name> (models.layers.remat_policy)."""
    overrides = effective_overrides(config.model.name, config.model.overrides.to_dict())
    policy = config.model.get("remat_policy", "")
    if policy and overrides.get("remat") is True:
        layers.remat_policy(policy)  # a clear error for an unknown name, before tracing
        overrides["remat"] = policy
    return overrides


def create_model(config, descriptor=None, for_eval=False):
    """The configured model; `for_eval` applies config.eval.output_stride (v3 paper §4.3: train at
    OS 16, evaluate at OS 8 with the same weights; parameters do not depend on it)."""
    descriptor = descriptor or dataset_descriptor(config)
    overrides = model_overrides(config)
    eval_stride = int(config.eval.get("output_stride", 0) or 0)
    if for_eval and eval_stride:
        overrides["output_stride"] = eval_stride
    return get_model(config.model.name, descriptor.num_classes, **overrides)


def crop_size(config, descriptor):
    """The training crop (H, W): config.input.crop_size, else the data set's."""
    return tuple(config.input.crop_size or descriptor.crop_size)


def eval_size(config, descriptor):
    """The fixed padded evaluation size (H, W): config.eval.size, else the data set's."""
    return tuple(config.eval.size or descriptor.eval_size)
