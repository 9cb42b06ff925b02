"""What every builder that reads an official release (downloaded or from a manual directory) shares.

A subclass lists its examples per split (`_list_examples`: ids + file paths, nothing decoded yet)
and turns one into a record (`_load_example`: bytes read, decoded, checked, labels mapped). This
base class runs them through the bad-input log (`validation.BadInputLog`), stores skipped examples
in the dataset info's metadata, checks the split sizes against the official release when the data
look like the full release, and finds folders either extracted or inside the original archives
(extracting only the members it needs, once, under the TFDS download directory).

Where the release comes from: a manual directory (--config.dataset.manual_dir) when one is given
(offline machines, mirrors, registration-gated releases); otherwise the public archives of
datasets.ARCHIVES, downloaded through TFDS's download manager (progress bar, completed downloads
kept and reused, SHA-256 checked against builders/checksums.tsv where published). The facts of each
builder (classes, split sizes, instructions, layout) come from deeplab_jax.data.datasets.
"""

import dataclasses
import hashlib
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import requests
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

from deeplab_jax.data import datasets
from deeplab_jax.data.builders import files, validation
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


class ManualSegmentationBuilder(tfds.core.GeneratorBasedBuilder):
    """Base of the builders that read an official release (downloaded or from a manual directory).

    Keyword arguments (also reachable from configs via sources.get_builder):
      skip_bad: skip (and record) bad examples instead of failing the build.
      full_data: True asserts the official split sizes, False never; None (default) asserts them
        when a split lists at least half of its official size, i.e. when this is the real release
        and not a test's fake copy.
    """

    # Set from deeplab_jax.data.datasets for every builder of a data set described there
    # (__init_subclass__); the folder builder takes its classes from its folder.
    NUM_CLASSES: int = 0
    OFFICIAL_SPLIT_SIZES: Mapping[str, Mapping[str, int]] = {}  # config name -> split -> size
    DOWNLOADS: Mapping[str, Tuple[str, ...]] = {}  # config name -> datasets.ARCHIVES keys
    INSTRUCTIONS: str = ""  # where to get the release (MANUAL_DOWNLOAD_INSTRUCTIONS adds LAYOUT)
    LAYOUT: str = ""
    # Subclasses set these.
    IMAGE_FORMAT: str = "jpeg"
    HOMEPAGE: str = ""
    CITATION: str = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)  # TFDS names the builder (cls.name) here
        facts = datasets.builder_descriptors(cls.name)
        if facts:
            first = next(iter(facts.values()))
            cls.NUM_CLASSES = first.num_classes
            cls.OFFICIAL_SPLIT_SIZES = {config: dict(d.splits) for config, d in facts.items()}
            cls.DOWNLOADS = {config: d.downloads for config, d in facts.items()}
            cls.INSTRUCTIONS, cls.LAYOUT = first.manual_instructions, first.layout
        if cls.INSTRUCTIONS:
            cls.MANUAL_DOWNLOAD_INSTRUCTIONS = f"{cls.INSTRUCTIONS}\nLayout:\n{cls.LAYOUT}"

    def __init__(self, *, skip_bad: bool = False, full_data: Optional[bool] = None, **kwargs):
        self._skip_bad = bool(skip_bad)
        self._full_data = full_data
        super().__init__(**kwargs)

    # ----- to implement -----------------------------------------------------------------------
    def _list_examples(self) -> Dict[str, List[ExampleFiles]]:
        """Examples per split, from the folders `locate` finds (self._manual_dir is None when the
        release is downloaded)."""
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
        self._dl_manager = dl_manager
        self._manual_dir = _given_manual_dir(dl_manager)
        if self._manual_dir is None and not self.DOWNLOADS.get(self._config_name):
            raise validation.DataNotFoundError(
                f"{self.name}: no manual directory was given (or it is empty), and this release "
                f"is not downloaded at run time.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        self._bad_log = validation.BadInputLog(f"{self.name}/{self._config_name}", self._skip_bad)
        listed = self._list_examples()
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

    def missing_error(self, missing: Sequence[str]) -> validation.DataNotFoundError:
        """One error listing every missing path, the layout and where the data come from."""
        if self._manual_dir:
            return validation.missing_files_error(self.name, self._manual_dir, missing,
                                                  self.LAYOUT, self.INSTRUCTIONS)
        return validation.missing_files_error(
            self.name, os.path.join(os.fspath(self._dl_manager.download_dir),
                                    "downloaded_extracted"),
            missing, self.LAYOUT, self.INSTRUCTIONS, downloaded=True)

    def locate(self, folder: str, archives: Sequence[str], members: Sequence[str] = (),
               check_extracted: bool = True, download: Optional[str] = None) -> Optional[str]:
        """Where `folder` of the release is, extracting it from an archive if needed.

        With a manual directory: manual_dir/folder if extracted, else extracted from the first of
        `archives` present there. check_extracted=False looks in the archives only (when
        manual_dir/folder may be another release's folder of the same name, e.g. COCO's images and
        COCO-Stuff's label maps). Without one: the archive datasets.ARCHIVES[download] is
        downloaded (None: not downloadable). Only the archive members under `members` are
        extracted, once, under the TFDS download directory.
        """
        if self._manual_dir is None:
            if download is None:
                return None
            path, url = self._download(datasets.ARCHIVES[download])
            return self._extracted(path, datasets.ARCHIVES[download].filename, folder, members,
                                   url)
        path = os.path.join(self._manual_dir, folder)
        if check_extracted and os.path.exists(path):
            return path
        for archive in archives:
            archive_path = os.path.join(self._manual_dir, archive)
            if os.path.isfile(archive_path):
                extracted = self._extracted(archive_path, archive, folder, members)
                if extracted:
                    return extracted
        return None

    def _extracted(self, archive_path: str, name: str, folder: str, members: Sequence[str],
                   url: Optional[str] = None) -> Optional[str]:
        """`folder` inside the members of `archive_path` extracted once (url: it was downloaded)."""
        kind = "downloaded" if url else "manual"
        destination = os.path.join(os.fspath(self._dl_manager.download_dir), f"{kind}_extracted",
                                   name)
        # One marker per member selection: a later call may need other members.
        selection = hashlib.sha1("\n".join(members).encode()).hexdigest()[:12]
        marker = os.path.join(destination, f".extracted-{selection}")
        if not os.path.exists(marker):
            try:
                files.extract_members(archive_path, members, destination)
            except validation.ArchiveError as error:
                if url is None:
                    raise
                _discard(archive_path)
                raise validation.ArchiveError(
                    f"{self.name}: {error}\nDownloaded from {url}; the file was deleted, so the "
                    "next run downloads it again.") from error
            open(marker, "w").close()
        extracted = os.path.join(destination, folder)
        return extracted if os.path.exists(extracted) else None

    def _download(self, archive: datasets.Archive) -> Tuple[str, str]:
        """(local path, URL) of `archive`, downloaded through TFDS (or reused when complete)."""
        failures = []
        for url in archive.urls:
            try:
                path = os.fspath(self._dl_manager.download(url))
            except NonMatchingChecksumError as error:  # the file is wrong: no mirror fallback
                _discard_partial_downloads(self._dl_manager.download_dir, self.name)
                raise validation.ArchiveError(
                    f"{self.name}: {archive.filename} downloaded from {url} does not match the "
                    f"SHA-256 and size recorded for it in builders/checksums.tsv:\n{error}\nThe "
                    "file was not kept; run again to download it again, or put the official file "
                    "in a manual directory (--config.dataset.manual_dir).") from error
            except (requests.exceptions.RequestException, tfds.download.DownloadError,
                    OSError) as error:
                failures.append(f"  {url}: {type(error).__name__}: {error}")
                _discard_partial_downloads(self._dl_manager.download_dir, self.name)
                continue
            try:
                files.check_published(path, archive.size, archive.md5, url)
            except validation.ArchiveError as error:
                _discard(path)
                raise validation.ArchiveError(
                    f"{self.name}: {error}\nThe file was deleted, so the next run downloads it "
                    "again.") from error
            return path, url
        raise validation.ArchiveError(
            f"{self.name}: could not download {archive.filename}:\n" + "\n".join(failures) +
            "\nRun again (completed downloads are kept), or download it yourself and give its "
            "directory as --config.dataset.manual_dir.")

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
        validation.check_label_values(label, self.num_classes, datasets.IGNORE_LABEL,
                                      label_path)
        return {"image": image_bytes, "label": encode_png(label), "image_id": example_id}


def _given_manual_dir(dl_manager) -> Optional[str]:
    """The manual directory if one exists and holds something; None means: download."""
    try:
        return os.fspath(dl_manager.manual_dir)
    except AssertionError:  # TFDS: none given, or missing, or empty
        return None


def _discard(path: str):
    """Deletes a downloaded file and TFDS's record of it: the next run downloads it again."""
    for stale in (path, f"{path}.INFO"):
        if os.path.exists(stale):
            os.remove(stale)


def _discard_partial_downloads(download_dir, dataset_name: str):
    """Removes TFDS's temporary folders of interrupted downloads ('<file>.tmp.<uuid>')."""
    for partial in tfds.core.Path(download_dir).joinpath(dataset_name).glob("*.tmp.*"):
        partial.rmtree(missing_ok=True)
