"""Random-access sources of decoded examples: build a TFDS data set if needed, then read it.

Reading goes through `tfds.data_source` on array_record files: random access by index, no
TensorFlow, which is what grain needs for global shuffling and exact resumption. Generated data sets
(the demo) are built on first use; real ones are built from the user's manual directory, and a
missing directory gives one error that says what to put where.
"""

import importlib
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from deeplab_jax.data.builders import BUILDERS
# Raised by the builders too (missing folders or files in the manual directory).
from deeplab_jax.data.builders.validation import BadExampleError, DataNotFoundError  # noqa: F401
from deeplab_jax.data.datasets import DatasetDescriptor


def _builder_class(builder_name: str):
    if builder_name not in BUILDERS:
        raise ValueError(
            f"no builder named {builder_name!r}; known builders: {sorted(BUILDERS)}")
    module_name, class_name = BUILDERS[builder_name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_builder(tfds_name: str, data_dir: str | None = None, **builder_kwargs):
    """Returns the builder for 'name' or 'name/config', writing under data_dir (TFDS default).

    builder_kwargs go to builders that take them (the manual-directory builders: skip_bad,
    full_data); a config name the builder does not predefine is made by its `make_config` (the
    folder builder: one config per folder).
    """
    builder_name, _, config_name = tfds_name.partition("/")
    cls = _builder_class(builder_name)
    kwargs = {"data_dir": data_dir or None, "file_format": "array_record"}
    if config_name:
        predefined = {config.name for config in (cls.BUILDER_CONFIGS or [])}
        if config_name not in predefined and hasattr(cls, "make_config"):
            kwargs["config"] = cls.make_config(config_name)
        else:
            kwargs["config"] = config_name
    kwargs.update({key: value for key, value in builder_kwargs.items() if value is not None})
    return cls(**kwargs)


def prepare(descriptor: DatasetDescriptor, data_dir: str | None = None,
            manual_dir: str | None = None, *, skip_bad: bool = False,
            full_data: bool | None = None):
    """Builds the data set if its files are missing; returns the ready builder.

    skip_bad: bad examples (corrupt files, size mismatches, out-of-range labels, listed ids without
    a file) are skipped and recorded in the dataset info (metadata 'skipped') instead of failing
    the build. full_data: see ManualSegmentationBuilder (None = detect the full release).
    """
    extra = {} if descriptor.generated else {"skip_bad": skip_bad, "full_data": full_data}
    builder = get_builder(descriptor.tfds_name, data_dir, **extra)
    if builder.is_prepared():
        return builder
    if not descriptor.generated:
        if not manual_dir or not os.path.isdir(os.path.expanduser(manual_dir)):
            raise DataNotFoundError(
                f"data set {descriptor.name!r} ({descriptor.tfds_name}) is not built in "
                f"{builder.data_dir} and no manual directory was found "
                f"(--config.dataset.manual_dir={manual_dir!r}).\n"
                f"{descriptor.manual_instructions or builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        manual_dir = os.path.expanduser(manual_dir)
    logging.info("building %s into %s (once; later runs read the files)", descriptor.tfds_name,
                 builder.data_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builder.download_and_prepare(download_config=download_config)
    return builder


class DecodedSource:
    """Random access to (image uint8 HxWx3, label uint8 HxW, image_id str) records of one split."""

    def __init__(self, builder, split: str):
        if split not in builder.info.splits:
            raise ValueError(
                f"split {split!r} not in {builder.name}; available: {list(builder.info.splits)}")
        self._source = builder.as_data_source(split=split)
        self.split = split
        self.name = builder.name

    def __len__(self):
        return len(self._source)

    def __getitem__(self, index):
        record = self._source[index]
        label = record["label"]
        if label.ndim == 3:
            label = label[..., 0]
        image_id = record["image_id"]
        if isinstance(image_id, bytes):
            image_id = image_id.decode()
        return {"image": np.asarray(record["image"]), "label": np.asarray(label),
                "image_id": image_id}

    def __repr__(self):
        return f"DecodedSource({self.name}, split={self.split!r}, len={len(self)})"


def load_split(descriptor: DatasetDescriptor, split: str, data_dir: str | None = None,
               manual_dir: str | None = None, *, skip_bad: bool = False,
               full_data: bool | None = None) -> DecodedSource:
    return DecodedSource(prepare(descriptor, data_dir, manual_dir, skip_bad=skip_bad,
                                 full_data=full_data), split)


def skipped_examples(builder) -> dict:
    """What a build with skip_bad=True left out: {split: {'count', 'examples'}} (empty if none)."""
    return dict(builder.info.metadata.get("skipped", {})) if builder.info.metadata else {}
