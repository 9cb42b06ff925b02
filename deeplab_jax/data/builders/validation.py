"""Bad-input checks shared by the dataset builders: one clear error, or a recorded skip.

Every image and mask a builder writes goes through here first, decoded exactly as the reader will
decode it (OpenCV for images, as `tfds.data_source` does; PIL palette indices for masks, because
OpenCV and TensorFlow return a palette PNG's colours, not its class ids). The problems caught:
missing files, corrupt or truncated JPEG/PNG, image/mask size mismatch, label values outside
[0, K) ∪ {ignore}, list-file ids without a file. By default the build stops at the first one,
naming the file and the problem; with `skip_bad=True` the example is skipped and the file name and
problem are recorded (log warning + the dataset info's metadata), so nothing is dropped silently.
"""

import dataclasses
import io
import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import cv2
import numpy as np
from absl import logging
from PIL import Image


class DataNotFoundError(FileNotFoundError):
    """The data set is neither built nor buildable from what is on disk (missing dir or files)."""


class ArchiveError(DataNotFoundError):
    """An archive cannot be used: not downloadable, truncated, corrupt, not the published file, or
    with members that would land outside the extraction folder."""


class BadExampleError(ValueError):
    """One example cannot be used as it is: names the file and the problem."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def missing_files_error(dataset: str, root: str, missing: Sequence[str], expected: str,
                        instructions: str = "", downloaded: bool = False) -> DataNotFoundError:
    """One error listing every missing path and what the layout should be.

    root: the manual directory, or (downloaded=True) where the downloaded archives were extracted.
    """
    shown = "\n".join(f"  {os.path.join(root, path)}" for path in missing[:20])
    more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
    where = (f"the archives downloaded and extracted under {root!r} (not the official files?)"
             if downloaded else f"the manual directory {root!r}")
    return DataNotFoundError(
        f"{dataset}: missing in {where}:\n{shown}{more}\n"
        f"Expected layout:\n{expected}" + (f"\n{instructions}" if instructions else ""))


def read_bytes(path: str) -> bytes:
    if not os.path.isfile(path):
        raise BadExampleError(path, "file not found (listed in the split but absent)")
    with open(path, "rb") as stream:
        data = stream.read()
    if not data:
        raise BadExampleError(path, "file is empty")
    return data


def _jpeg_complete(data: bytes) -> bool:
    # A JPEG ends with the EOI marker; libjpeg pads a truncated stream with grey and only warns.
    return data.rstrip(b"\0")[-2:] == b"\xff\xd9"


def _decode_raw(data: bytes, path: str) -> np.ndarray:
    """OpenCV's IMREAD_UNCHANGED decode, exactly what `tfds.data_source` will do on read."""
    if data[:3] == b"\xff\xd8\xff" and not _jpeg_complete(data):
        raise BadExampleError(path, "truncated JPEG (no end-of-image marker)")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        _verify_png(data, path)
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        raise BadExampleError(path, "corrupt or unsupported image (OpenCV cannot decode it)")
    if array.dtype != np.uint8:
        raise BadExampleError(path, f"image has {array.dtype} pixels; 8-bit images are expected")
    return array


def decode_image(data: bytes, path: str) -> np.ndarray:
    """Decodes image bytes as the reader will (OpenCV); RGB uint8 (H, W, 3)."""
    return _to_rgb(_decode_raw(data, path))


def _to_rgb(raw: np.ndarray) -> np.ndarray:
    if raw.ndim == 2:
        return np.repeat(raw[..., None], 3, axis=-1)
    if raw.shape[2] in (1, 2):  # grey (+ alpha)
        return np.repeat(raw[..., :1], 3, axis=-1)
    if raw.shape[2] == 4:
        return cv2.cvtColor(raw, cv2.COLOR_BGRA2RGB)
    return raw[..., ::-1]


def _verify_png(data: bytes, path: str):
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every row: a truncated stream raises here
    except (OSError, SyntaxError, ValueError) as error:
        raise BadExampleError(path, f"corrupt or truncated PNG ({error})") from error


def image_bytes_for_reader(data: bytes, path: str, encode_png: Callable) -> tuple:
    """Returns (bytes to store, decoded RGB HxWx3), decoding once.

    JPEG, 3-channel and grey files are stored untouched (the reader repeats grey to 3 channels);
    anything else the reader would not decode to RGB (RGBA, 2-channel) is re-encoded as an RGB
    PNG from the decoded pixels.
    """
    raw = _decode_raw(data, path)
    rgb = _to_rgb(raw)
    if raw.ndim == 2 or raw.shape[2] in (1, 3):
        return data, rgb
    return encode_png(rgb), rgb


def decode_mask_png(data: bytes, path: str) -> np.ndarray:
    """Class ids (H, W) uint8 of a palette ('P') or greyscale ('L') PNG, read with PIL."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = image.mode
            array = np.array(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise BadExampleError(path, f"corrupt or truncated mask PNG ({error})") from error
    if mode in ("P", "L"):
        return array.astype(np.uint8)
    if mode in ("I;16", "I;16B", "I") and array.max(initial=0) <= 255:
        return array.astype(np.uint8)
    raise BadExampleError(
        path, f"mask PNG has mode {mode!r}; expected a palette ('P') or single-channel 8-bit ('L') "
              "PNG of class ids")


def check_pair(image: np.ndarray, label: np.ndarray, image_path: str, label_path: str):
    if image.shape[:2] != label.shape[:2]:
        raise BadExampleError(
            label_path, f"mask is {label.shape[0]}x{label.shape[1]} but its image {image_path} is "
                        f"{image.shape[0]}x{image.shape[1]}")


def check_label_values(label: np.ndarray, num_classes: int, ignore_label: int, path: str):
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != ignore_label)]
    if bad.size:
        raise BadExampleError(
            path, f"label values {bad.tolist()[:10]} outside [0, {num_classes}) and the ignore "
                  f"label {ignore_label}")


@dataclasses.dataclass
class SkipRecord:
    split: str
    example_id: str
    path: str
    problem: str

    def line(self) -> str:
        return f"{self.example_id} ({self.path}): {self.problem}"


class BadInputLog:
    """Raises on a bad example, or (skip_bad=True) records it and moves on."""

    def __init__(self, dataset: str, skip_bad: bool):
        self.dataset = dataset
        self.skip_bad = skip_bad
        self.records: List[SkipRecord] = []

    def guard(self, split: str, items: Iterable, make_example: Callable, id_of: Callable):
        """Yields make_example(item) for each item; bad ones raise or are recorded."""
        for item in items:
            try:
                yield make_example(item)
            except BadExampleError as error:
                if not self.skip_bad:
                    raise BadExampleError(
                        error.path, f"{error.problem} [data set {self.dataset}, split {split!r}, "
                                    f"example {id_of(item)!r}; fix or remove the file, or build "
                                    "with skip_bad=True (config.dataset.skip_bad) to skip such "
                                    "examples]") from error
                record = SkipRecord(split, str(id_of(item)), error.path, error.problem)
                self.records.append(record)
                logging.warning("%s: skipping bad example in split %r: %s", self.dataset, split,
                                record.line())

    def count(self, split: Optional[str] = None) -> int:
        return sum(1 for r in self.records if split is None or r.split == split)

    def summary(self) -> Dict[str, dict]:
        """{split: {'count': n, 'examples': ['id (path): problem', ...]}} for the dataset info."""
        splits: Dict[str, dict] = {}
        for record in self.records:
            entry = splits.setdefault(record.split, {"count": 0, "examples": []})
            entry["count"] += 1
            entry["examples"].append(record.line())
        return splits
