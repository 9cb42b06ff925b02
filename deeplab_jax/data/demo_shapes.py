"""Procedural images for the embedded demo data set `deeplab_demo`.

The demo must make segmentation non-trivial in the ways DeepLab-v2 (§1) addresses, while being
learnable by a small model in minutes on two CPU cores:

- classes are defined by *shape*, never by colour: every object gets a random colour and texture, and
  the background is coloured noise with unlabelled thin curves, so a per-pixel colour rule fails;
- object sizes differ 4x (diameters 18-72 px), which is what multi-scale context (ASPP, MSC) is for;
- objects touch and occlude each other (later objects are drawn on top; labels show what is visible);
- thin parts: the bar class is 6-9 px wide and up to 100 px long, the cross has 6 px+ arms, the ring a
  5 px+ wall — close to the limit of an output-stride-8 network;
- like PASCAL VOC, a band of label 255 (ignored) runs along every object boundary.

Everything is a pure function of (seed, split, index), so the data set is identical on every machine
and examples can be generated in any order.
"""

import zlib

import cv2
import numpy as np

from deeplab_jax.data.datasets import DEMO_CLASS_NAMES as CLASS_NAMES
from deeplab_jax.data.datasets import DEMO_IMAGE_SIZE as IMAGE_SIZE
from deeplab_jax.data.datasets import IGNORE_LABEL

NUM_CLASSES = len(CLASS_NAMES)
MIN_RADIUS, MAX_RADIUS = 9.0, 36.0  # diameters 18..72 px: a 4x range of scales
OBJECTS_PER_IMAGE = (2, 5)
# An object's colour differs from the mean of what it covers by at least this RGB distance, so its
# shape is visible (as objects in photographs mostly are); the contrast is still often low.
MIN_CONTRAST = 90.0

_DISC, _SQUARE, _TRIANGLE, _RING, _STAR, _BAR, _CROSS = range(1, 8)


def _rng_for(seed: int, split: str, index: int) -> np.random.Generator:
    # crc32 of the split name keeps train/val streams disjoint and stable across Python runs.
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def _rotate(points_Nx2: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points_Nx2 @ np.array([[c, s], [-s, c]])


def _regular_polygon(n: int, radius: float, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(radius: float) -> np.ndarray:
    angles = -np.pi / 2 + np.pi * np.arange(10) / 5
    radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _rectangle(length: float, width: float) -> np.ndarray:
    return np.array([[-length, -width], [length, -width], [length, width], [-length, width]]) / 2


def _cross(radius: float) -> np.ndarray:
    a, w = radius, max(3.0, 0.2 * radius)  # arm half-length, arm half-width (>= 6 px wide)
    return np.array([[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w], [w, a], [-w, a],
                     [-w, w], [-a, w], [-a, -w], [-w, -w]])


def _shape_mask(cls: int, radius: float, centre, angle: float, rng, size: int) -> np.ndarray:
    """Rasterises one object of class `cls` into a boolean [size, size] mask."""
    mask = np.zeros((size, size), np.uint8)
    cx, cy = centre
    if cls in (_DISC, _RING):
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(radius)), 1, -1)
        if cls == _RING:
            wall = max(5.0, 0.4 * radius)
            cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(radius - wall)), 0, -1)
        return mask.astype(bool)
    if cls == _SQUARE:
        points = _regular_polygon(4, radius * 1.05, np.pi / 4)
    elif cls == _TRIANGLE:
        points = _regular_polygon(3, radius * 1.15, -np.pi / 2)
    elif cls == _STAR:
        points = _star(radius * 1.15)
    elif cls == _BAR:
        points = _rectangle(length=rng.uniform(3.0, 5.5) * radius + 20, width=rng.uniform(6, 9))
    elif cls == _CROSS:
        points = _cross(radius * 1.1)
    else:
        raise ValueError(f"unknown demo class id {cls}")
    points = _rotate(points, angle) + np.array([cx, cy])
    cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _smooth_noise(rng, size: int, cells: int, channels: int) -> np.ndarray:
    """Low-frequency random field in [0, 1]: a coarse random grid upsampled bicubically."""
    coarse = rng.random((cells, cells, channels)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(field.reshape(size, size, channels), 0.0, 1.0)


def _contrasting_colour(rng, covered_rgb: np.ndarray) -> np.ndarray:
    """A random colour at least MIN_CONTRAST away from `covered_rgb` (rejection sampling)."""
    for _ in range(32):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        if np.linalg.norm(colour - covered_rgb) >= MIN_CONTRAST:
            return colour
    return (255.0 - covered_rgb).astype(np.float32)  # the complement is always far enough


def _texture(rng, size: int, covered_rgb: np.ndarray) -> np.ndarray:
    """An object's fill: a random colour, plain, striped, or speckled (float [size, size, 3])."""
    base = _contrasting_colour(rng, covered_rgb)
    kind = rng.integers(3)
    if kind == 0:
        return np.broadcast_to(base, (size, size, 3)).copy()
    if kind == 1:
        other = _contrasting_colour(rng, covered_rgb)
        period, angle = rng.uniform(4, 12), rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        stripes = (np.floor(phase) % 2)[..., None]
        return base * (1 - stripes) + other * stripes
    speckle = rng.normal(0.0, 35.0, (size, size, 1)).astype(np.float32)
    return np.clip(base + speckle, 0, 255)


def _background(rng, size: int) -> np.ndarray:
    """Coloured noise at two frequencies plus unlabelled thin curves (clutter, not look-alikes)."""
    image = 255.0 * _smooth_noise(rng, size, int(rng.integers(3, 7)), 3)
    image += rng.uniform(20, 60) * (_smooth_noise(rng, size, 24, 3) - 0.5)
    image += rng.normal(0.0, rng.uniform(4, 14), (size, size, 3))
    clutter = np.zeros((size, size, 3), np.uint8)
    for _ in range(int(rng.integers(2, 7))):
        points = np.cumsum(rng.normal(0, 14, (int(rng.integers(3, 7)), 2)), axis=0)
        points += rng.uniform(0, size, 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.polylines(clutter, [np.round(points).astype(np.int32)], False, colour,
                      thickness=int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
    drawn = clutter.any(axis=2, keepdims=True)
    image = np.where(drawn, clutter.astype(np.float32), image)
    return image


def _ignore_band(label_HxW: np.ndarray) -> np.ndarray:
    """VOC-style: pixels whose 3x3 neighbourhood holds more than one class become 255."""
    dilated = cv2.dilate(label_HxW, np.ones((3, 3), np.uint8))
    eroded = cv2.erode(label_HxW, np.ones((3, 3), np.uint8))
    banded = label_HxW.copy()
    banded[dilated != eroded] = IGNORE_LABEL
    return banded


def generate_example(seed: int, split: str, index: int, size: int = IMAGE_SIZE):
    """Returns (image uint8 [size, size, 3] RGB, label uint8 [size, size]) for one demo example."""
    rng = _rng_for(seed, split, index)
    image = _background(rng, size)
    label = np.zeros((size, size), np.uint8)
    num_objects = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    for _ in range(num_objects):
        cls = int(rng.integers(1, NUM_CLASSES))
        radius = float(np.exp(rng.uniform(np.log(MIN_RADIUS), np.log(MAX_RADIUS))))
        margin = 0.5 * radius
        centre = rng.uniform(margin, size - margin, 2)
        mask = _shape_mask(cls, radius, centre, rng.uniform(0, 2 * np.pi), rng, size)
        if mask.sum() < 30:  # clipped away at the border: nothing recognisable left
            continue
        fill = _texture(rng, size, image[mask].mean(axis=0))
        # Soft edge so boundaries are not perfectly crisp (as in photographs).
        alpha = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0.7)[..., None]
        image = image * (1 - alpha) + fill * alpha
        label[mask] = cls
    image = np.clip(image + rng.normal(0.0, 3.0, image.shape), 0, 255).astype(np.uint8)
    return image, _ignore_band(label)
