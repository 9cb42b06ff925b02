"""Per-example preprocessing as grain transforms (host side, numpy + OpenCV).

Training (DeepLab-v2, §4.1.2 and the released recipe): random scale in [0.5, 1.5] (bilinear for the
image, nearest for the label), pad to at least the crop size with the mean colour (image) and the
ignore label (label), random crop, random left-right flip. Images stay uint8 so host work and
host->device transfer are halved; normalisation happens inside the jitted step.

Evaluation: each image is padded bottom/right to one fixed size with a validity mask, so every eval
batch has the same shape and compiles once; padding never enters the metrics.
"""

import dataclasses
from typing import Tuple

import cv2
import grain
import numpy as np

from deeplab_jax.data.datasets import IGNORE_LABEL, PAD_RGB


def _pad_to(array, height, width, value):
    pad_h, pad_w = height - array.shape[0], width - array.shape[1]
    if pad_h <= 0 and pad_w <= 0:
        return array
    pads = [(0, max(pad_h, 0)), (0, max(pad_w, 0))] + [(0, 0)] * (array.ndim - 2)
    if array.ndim == 3 and np.ndim(value) == 1:
        # np.pad takes one constant per axis, not per channel: pad each channel with its value.
        return np.stack([np.pad(array[..., c], pads[:2], constant_values=value[c])
                         for c in range(array.shape[2])], axis=-1)
    return np.pad(array, pads, constant_values=value)


@dataclasses.dataclass(frozen=True)
class TrainAugment(grain.transforms.RandomMap):
    """Random scale, pad (mean / ignore), random crop and flip; deterministic given the rng."""

    crop_size: Tuple[int, int]
    scale_range: Tuple[float, float] = (0.5, 1.5)
    flip: bool = True
    pad_value: Tuple[float, float, float] = PAD_RGB
    ignore_label: int = IGNORE_LABEL

    def random_map(self, example, rng: np.random.Generator):
        image, label = example["image"], example["label"]
        if image.shape[:2] != label.shape[:2]:
            raise ValueError(f"image {example.get('image_id')}: image {image.shape[:2]} and label "
                             f"{label.shape[:2]} sizes differ")
        low, high = self.scale_range
        scale = rng.uniform(low, high) if high > low else low
        if scale != 1.0:
            height = max(1, int(round(image.shape[0] * scale)))
            width = max(1, int(round(image.shape[1] * scale)))
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
        crop_h, crop_w = self.crop_size
        image = _pad_to(image, crop_h, crop_w, np.asarray(self.pad_value, np.uint8))
        label = _pad_to(label, crop_h, crop_w, self.ignore_label)
        top = int(rng.integers(0, image.shape[0] - crop_h + 1))
        left = int(rng.integers(0, image.shape[1] - crop_w + 1))
        image = image[top:top + crop_h, left:left + crop_w]
        label = label[top:top + crop_h, left:left + crop_w]
        if self.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return {"image": np.ascontiguousarray(image, np.uint8),
                "label": np.ascontiguousarray(label, np.uint8)}


@dataclasses.dataclass(frozen=True)
class EvalPad(grain.transforms.Map):
    """Pads to a fixed (H, W); adds `mask` (True on real pixels) and the original size."""

    size: Tuple[int, int]
    ignore_label: int = IGNORE_LABEL
    pad_value: Tuple[float, float, float] = PAD_RGB

    def map(self, example):
        image, label = example["image"], example["label"]
        height, width = image.shape[:2]
        if height > self.size[0] or width > self.size[1]:
            raise ValueError(
                f"image {example.get('image_id')!r} is {height}x{width}, larger than the eval size "
                f"{self.size[0]}x{self.size[1]}; raise config.eval.size (or the data set's eval_size)"
                " or use sliding-window evaluation")
        mask = np.zeros(self.size, bool)
        mask[:height, :width] = True
        return {
            "image": _pad_to(image, *self.size, np.asarray(self.pad_value, np.uint8)),
            "label": _pad_to(label, *self.size, self.ignore_label),
            "mask": mask,
            "height": np.int32(height),
            "width": np.int32(width),
            "image_id": str(example.get("image_id", "")),
        }


def empty_eval_example(size, ignore_label=IGNORE_LABEL):
    """An all-padding example used to fill the last eval batch to the full batch size."""
    return {
        "image": np.zeros((*size, 3), np.uint8),
        "label": np.full(size, ignore_label, np.uint8),
        "mask": np.zeros(size, bool),
        "height": np.int32(0),
        "width": np.int32(0),
        "image_id": "",
    }
