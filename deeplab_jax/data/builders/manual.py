"""What every builder that reads an official release from a manual directory shares.

A subclass lists its examples per split (`_list_examples`: ids + file paths, nothing decoded yet)
and turns one into a record (`_load_example`: bytes read, decoded, checked, labels mapped). This
base class runs them through the bad-input log (`validation.BadInputLog`), stores skipped examples
in the dataset info's metadata, checks the split sizes against the official release when the data
look like the full release, and finds folders either extracted or inside the original archives
(extracting only the members it needs, once, under the TFDS download directory).

Nothing is downloaded: `MANUAL_DOWNLOAD_INSTRUCTIONS` names the files and where to get them.
"""

import dataclasses
import hashlib
import os
import tarfile
import zipfile
from typing import Dict, List, Mapping, Optional, Sequence

import tensorflow_datasets as tfds
from absl import logging

from deeplab_jax.data.builders import validation
from deeplab_jax.data.builders.features import encode_png


@dataclasses.dataclass(frozen=True)
class ExampleFiles:
    """One example before decoding: its id and the files (or arrays' source) it is made from."""
    example_id: str
    image_path: str
    label_path: str
    extra: tuple = ()


def segmentation_features(image_format: str) -> tfds.features.FeaturesDict:
    """Same keys as features.segmentation_features; the image feature names its real encoding.

    An Image feature declared 'png' would accept JPEG bytes too (TFDS does not check the bytes and
    OpenCV decodes either), but then features.json would misstate what is stored.
    """
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format=image_format),
        "label": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        "image_id": tfds.features.Text(),
    })


def first_existing(root: str, candidates: Sequence[str]) -> Optional[str]:
    for candidate in candidates:
        path = os.path.join(root, candidate)
        if os.path.exists(path):
            return path
    return None


def read_id_list(path: str) -> List[str]:
    """Ids of a list file, one per line (the first whitespace-separated field)."""
    with open(path) as stream:
        return [line.split()[0] for line in stream if line.strip()]


def _extract_members(archive: str, prefixes: Sequence[str], destination: str):
    """Extracts the archive members under any of `prefixes` (all members if prefixes is empty)."""
    logging.info("extracting %s (members under %s) into %s", archive, list(prefixes) or "all",
                 destination)
    os.makedirs(destination, exist_ok=True)

    def wanted(name):
        return not prefixes or any(name.startswith(prefix) for prefix in prefixes)

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(destination, [name for name in bundle.namelist() if wanted(name)])
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as bundle:
            # Streaming order: one pass over a compressed tar, members filtered as they come.
            for member in bundle:
                if wanted(member.name.lstrip("./")) and (member.isfile() or member.isdir()):
                    bundle.extract(member, destination, filter="data")
    else:
        raise validation.DataNotFoundError(f"{archive} is neither a zip nor a tar archive")


class ManualSegmentationBuilder(tfds.core.GeneratorBasedBuilder):
    """Base of the builders that read an official release from `--config.dataset.manual_dir`.

    Keyword arguments (also reachable from configs via sources.get_builder):
      skip_bad: skip (and record) bad examples instead of failing the build.
      full_data: True asserts the official split sizes, False never; None (default) asserts them
        when a split lists at least half of its official size, i.e. when this is the real release
        and not a test's fake copy.
    """

    # Subclasses set these.
    NUM_CLASSES: int = 0
    IGNORE_LABEL: int = 255
    IMAGE_FORMAT: str = "jpeg"
    OFFICIAL_SPLIT_SIZES: Mapping[str, Mapping[str, int]] = {}  # config name -> split -> size
    HOMEPAGE: str = ""
    CITATION: str = ""

    def __init__(self, *, skip_bad: bool = False, full_data: Optional[bool] = None, **kwargs):
        self._skip_bad = bool(skip_bad)
        self._full_data = full_data
        super().__init__(**kwargs)

    # ----- to implement -----------------------------------------------------------------------
    def _list_examples(self, manual_dir: str, dl_manager) -> Dict[str, List[ExampleFiles]]:
        raise NotImplementedError

    def _load_example(self, files: ExampleFiles) -> dict:
        raise NotImplementedError

    # ----- shared machinery -------------------------------------------------------------------
    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=segmentation_features(self.IMAGE_FORMAT),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        if not os.path.isdir(manual_dir):
            raise validation.DataNotFoundError(
                f"{self.name}: manual directory {manual_dir!r} does not exist.\n"
                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        self._bad_log = validation.BadInputLog(f"{self.name}/{self._config_name}", self._skip_bad)
        listed = self._list_examples(manual_dir, dl_manager)
        for split in [split for split, items in listed.items() if not items]:
            logging.warning("%s: split %r lists no examples; it is left out", self.name, split)
            del listed[split]
        self._check_split_sizes({split: len(items) for split, items in listed.items()})
        self._pending_splits = set(listed)
        return {split: self._generate_examples(split, items) for split, items in listed.items()}

    def _official_sizes(self) -> Mapping[str, int]:
        return self.OFFICIAL_SPLIT_SIZES.get(self._config_name, {})

    def _is_full_data(self, listed_sizes: Mapping[str, int]) -> bool:
        if self._full_data is not None:
            return self._full_data
        official = self._official_sizes()
        return any(split in official and size * 2 >= official[split]
                   for split, size in listed_sizes.items())

    def _check_split_sizes(self, listed_sizes: Mapping[str, int]):
        """Listed examples (written + skipped, later) must equal the official counts."""
        self._assert_sizes = self._is_full_data(listed_sizes)
        if not self._assert_sizes:
            return
        official = self._official_sizes()
        # Splits a release may lack (e.g. Cityscapes test) are checked only when present.
        wrong = {split: (listed_sizes[split], size) for split, size in official.items()
                 if split in listed_sizes and listed_sizes[split] != size}
        if wrong:
            lines = "\n".join(f"  {split}: found {found}, official release has {size}"
                              for split, (found, size) in wrong.items())
            raise validation.DataNotFoundError(
                f"{self.name}/{self._config_name}: this looks like the full release but the "
                f"split sizes differ from the official ones:\n{lines}\nCheck that every archive was "
                "extracted completely (or pass full_data=False to build a subset on purpose).")

    def _generate_examples(self, split: str, items: List[ExampleFiles]):
        yield from self._bad_log.guard(
            split, items, lambda files: (files.example_id, self._load_example(files)),
            lambda files: files.example_id)
        written = len(items) - self._bad_log.count(split)
        self._record_skips()
        if items and not written:
            raise ValueError(
                f"{self.name}: all {len(items)} examples of split {split!r} are bad (skipped): "
                f"{self._bad_log.summary()[split]['examples'][:3]} ...; check the layout")
        if self._assert_sizes and split in self._official_sizes():
            expected = self._official_sizes()[split]
            if written + self._bad_log.count(split) != expected:
                raise AssertionError(
                    f"{self.name}: split {split!r} has {written} written + "
                    f"{self._bad_log.count(split)} skipped examples, official size {expected}")
        logging.info("%s: split %r: %d examples written, %d skipped", self.name, split, written,
                     self._bad_log.count(split))

    def _record_skips(self):
        summary = self._bad_log.summary()
        self.info.metadata["skip_bad"] = self._skip_bad
        self.info.metadata["skipped"] = summary
        self.info.metadata["skipped_count"] = sum(entry["count"] for entry in summary.values())

    # ----- helpers for subclasses -------------------------------------------------------------
    @property
    def _config_name(self) -> str:
        return self.builder_config.name if self.builder_config else "default"

    @property
    def num_classes(self) -> int:
        return self.NUM_CLASSES

    def locate(self, manual_dir: str, folder: str, archives: Sequence[str], dl_manager,
               members: Sequence[str] = (), check_extracted: bool = True) -> Optional[str]:
        """manual_dir/folder if extracted; else extracts it from the first archive present.

        check_extracted=False looks in the archives only (when manual_dir/folder may be another
        release's folder of the same name, e.g. COCO's images and COCO-Stuff's label maps).
        """
        path = os.path.join(manual_dir, folder)
        if check_extracted and os.path.exists(path):
            return path
        for archive in archives:
            archive_path = os.path.join(manual_dir, archive)
            if not os.path.isfile(archive_path):
                continue
            destination = os.path.join(os.fspath(dl_manager.download_dir), "manual_extracted",
                                       os.path.basename(archive))
            # One marker per member selection: a later call may need other members.
            selection = hashlib.sha1("\n".join(members).encode()).hexdigest()[:12]
            marker = os.path.join(destination, f".extracted-{selection}")
            if not os.path.exists(marker):
                _extract_members(archive_path, members, destination)
                open(marker, "w").close()
            extracted = os.path.join(destination, folder)
            if os.path.exists(extracted):
                return extracted
        return None

    def load_image(self, path: str):
        """(bytes to store, decoded RGB array) of an image file, checked."""
        data = validation.read_bytes(path)
        return validation.image_bytes_for_reader(data, path, encode_png)

    def load_mask(self, path: str):
        return validation.decode_mask_png(validation.read_bytes(path), path)

    def finish(self, example_id: str, image_bytes: bytes, image, label, image_path: str,
               label_path: str) -> dict:
        """Checks sizes and label values, encodes the label; the record to write."""
        validation.check_pair(image, label, image_path, label_path)
        validation.check_label_values(label, self.num_classes, self.IGNORE_LABEL, label_path)
        return {"image": image_bytes, "label": encode_png(label), "image_id": example_id}
