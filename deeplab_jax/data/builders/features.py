"""The feature spec every segmentation builder shares, and TensorFlow-free PNG encoding.

`tfds.features.Image` encodes numpy arrays with TensorFlow; given already-encoded bytes it stores
them as they are, and reading through `tfds.data_source` decodes with OpenCV. So builders hand it
bytes: original JPEG files untouched, labels as PNG encoded here (lossless, class ids kept exactly).
"""

import cv2
import numpy as np
import tensorflow_datasets as tfds


def segmentation_features() -> tfds.features.FeaturesDict:
    """image: RGB uint8 (H, W, 3); label: class ids uint8 (H, W, 1), 255 = ignore; image_id."""
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
        "label": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        "image_id": tfds.features.Text(),
    })


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an RGB (H, W, 3) or single-channel (H, W) uint8 array."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"encode_png needs uint8, got {array.dtype}")
    if array.ndim == 3:
        array = array[..., ::-1]  # OpenCV writes BGR
    ok, data = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise ValueError(f"OpenCV could not encode an array of shape {array.shape} as PNG")
    return data.tobytes()
