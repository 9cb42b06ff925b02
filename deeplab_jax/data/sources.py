"""Random-access sources of decoded examples: build a TFDS data set if needed, then read it.

Reading goes through `tfds.data_source` on array_record files: random access by index, no
TensorFlow, which is what grain needs for global shuffling and exact resumption. Generated data sets
(the demo) are built on first use; public releases are downloaded and built on first use, or built
from the user's manual directory when one is given (always for registration-gated releases); a
missing directory gives one error that says what to put where.

The TFDS data_dir may be remote (gs://...). TFDS reads its metadata through etils.epath, which
without TensorFlow needs the `gcsfs` package (pip install deeplab-jax[gcs]); array_record reads
gs:// itself. array_record cannot write to gs://, so a remote data_dir is built in a local staging
directory and the finished version directory is copied there with epath.
"""

import importlib
import os
import shutil
import tempfile

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from deeplab_jax.data import datasets
from deeplab_jax.data.builders import BUILDERS
from deeplab_jax.data.builders.manual import ManualSegmentationBuilder
# Raised by the builders too (missing folders or files in the manual directory, bad archives).
from deeplab_jax.data.builders.validation import (  # noqa: F401
    ArchiveError,
    BadExampleError,
    DataNotFoundError,
)
from deeplab_jax.data.datasets import DatasetDescriptor

# Written last when a remote data set is copied: TFDS calls a version folder prepared once both
# exist (tfds.core.utils.file_utils.is_valid_variant_dir), so a partial copy never looks complete.
_METADATA_LAST = ("features.json", "dataset_info.json")


class DatasetConfigError(ValueError):
    """config.dataset fields that do not fit together (named in the message, with the fix)."""


def _builder_class(builder_name: str):
    if builder_name not in BUILDERS:
        raise ValueError(
            f"no builder named {builder_name!r}; known builders: {sorted(BUILDERS)}")
    module_name, class_name = BUILDERS[builder_name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_builder(tfds_name: str, data_dir: str | None = None, **builder_kwargs):
    """Returns the builder for 'name' or 'name/config', writing under data_dir (TFDS default).

    builder_kwargs go to the builders that take them (the release builders: skip_bad, full_data;
    None values are dropped); a config name the builder does not predefine is made by its
    `make_config` (the folder builder: one config per folder).
    """
    builder_name, _, config_name = tfds_name.partition("/")
    cls = _builder_class(builder_name)
    options = {key: value for key, value in builder_kwargs.items() if value is not None}
    if options and not issubclass(cls, ManualSegmentationBuilder):
        raise DatasetConfigError(
            f"config.dataset.tfds_name={tfds_name!r}: the {builder_name!r} builder generates its "
            f"data and takes no manual-directory options ({', '.join(sorted(options))}); use a "
            "data set read from a release or folder, or leave those options unset")
    kwargs = {"data_dir": data_dir or None, "file_format": "array_record", **options}
    if config_name:
        predefined = {config.name for config in (cls.BUILDER_CONFIGS or [])}
        if config_name not in predefined and hasattr(cls, "make_config"):
            kwargs["config"] = cls.make_config(config_name)
        else:
            kwargs["config"] = config_name
    try:
        return cls(**kwargs)
    except ImportError as error:  # gs:// without TensorFlow needs gcsfs
        if _is_local(data_dir):
            raise
        raise ImportError(f"data_dir {data_dir!r}: {error} (pip install 'deeplab-jax[gcs]')"
                          ) from error


def check_builder_fits(descriptor: DatasetDescriptor):
    """DatasetConfigError when tfds_name names another data set's builder than `descriptor.name`."""
    expected = datasets.dataset_builder(descriptor.name)
    actual = datasets.builder_name(descriptor.tfds_name)
    if expected is not None and actual != expected:
        raise DatasetConfigError(
            f"config.dataset.tfds_name={descriptor.tfds_name!r} belongs to the {actual!r} builder "
            f"but config.dataset.name={descriptor.name!r} is built by {expected!r}; clear "
            "--config.dataset.tfds_name='' (or name a config of that builder), or set "
            "--config.dataset.name to the data set you meant")


def prepare(descriptor: DatasetDescriptor, data_dir: str | None = None,
            manual_dir: str | None = None, *, skip_bad: bool = False,
            full_data: bool | None = None):
    """Builds the data set if its files are missing; returns the ready builder.

    Public releases are downloaded when manual_dir is empty. skip_bad: bad examples (corrupt
    files, size mismatches, out-of-range labels, listed ids without a file) are skipped and
    recorded in the dataset info (metadata 'skipped') instead of failing the build. full_data:
    see ManualSegmentationBuilder (None = detect the full release).
    """
    check_builder_fits(descriptor)
    options = {} if descriptor.generated else {"skip_bad": skip_bad, "full_data": full_data}
    builder = get_builder(descriptor.tfds_name, data_dir, **options)
    if builder.is_prepared():
        return builder
    if manual_dir:
        expanded = os.path.expanduser(manual_dir)
        if not os.path.isdir(expanded) or not os.listdir(expanded):
            raise DataNotFoundError(
                f"data set {descriptor.name!r} ({descriptor.tfds_name}) is not built in "
                f"{builder.data_dir} and the manual directory "
                f"--config.dataset.manual_dir={manual_dir!r} does not exist or is empty"
                + (" (set it to '' to download the public release)" if descriptor.downloads
                   else "") + f".\n{_instructions(descriptor)}")
        manual_dir = expanded
    elif not (descriptor.generated or descriptor.downloads):
        raise DataNotFoundError(
            f"data set {descriptor.name!r} ({descriptor.tfds_name}) is not built in "
            f"{builder.data_dir} and no manual directory was given "
            f"(--config.dataset.manual_dir).\n{_instructions(descriptor)}")
    logging.info("building %s into %s (once; later runs read the files)", descriptor.tfds_name,
                 builder.data_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    if _is_local(data_dir):
        builder.download_and_prepare(download_config=download_config)
        return builder
    _build_and_copy(descriptor.tfds_name, options, download_config, epath.Path(builder.data_dir))
    return get_builder(descriptor.tfds_name, data_dir, **options)


def _instructions(descriptor: DatasetDescriptor) -> str:
    return f"{descriptor.manual_instructions}\nLayout:\n{descriptor.layout}"


def _is_local(data_dir) -> bool:
    return not data_dir or "://" not in os.fspath(data_dir)


def _build_and_copy(tfds_name: str, options: dict, download_config, target: epath.Path):
    """Builds into a local staging directory, then copies the version folder to `target`.

    Downloads go to the local TFDS download directory, so that they survive a failed copy.
    """
    with tempfile.TemporaryDirectory(prefix="deeplab_jax_tfds_") as staging:
        local = get_builder(tfds_name, staging, **options)
        local.download_and_prepare(
            download_dir=os.path.join(os.path.expanduser(tfds.core.constants.DATA_DIR),
                                      "downloads"),
            download_config=download_config)
        source = os.fspath(local.data_dir)  # local: plain file APIs
        logging.info("copying the built %s from %s to %s", tfds_name, source, target)
        paths = sorted(os.path.relpath(os.path.join(folder, name), source)
                       for folder, _, names in os.walk(source) for name in names)
        paths.sort(key=lambda path: os.path.basename(path) in _METADATA_LAST)  # metadata last
        for path in paths:
            destination = target / path
            destination.parent.mkdir(parents=True, exist_ok=True)
            with open(os.path.join(source, path), "rb") as reader, \
                    destination.open("wb") as writer:
                shutil.copyfileobj(reader, writer, 1 << 24)


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
