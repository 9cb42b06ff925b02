"""Photographs for tests: scikit-image's sample images, resized (real colour statistics)."""

import numpy as np


def photo(name, height, width):
    """scikit-image's `name` photograph (e.g. 'astronaut', 'coffee', 'chelsea') as uint8 HxWx3."""
    import skimage.data
    import skimage.transform

    image = getattr(skimage.data, name)()[..., :3]
    resized = skimage.transform.resize(image, (height, width), anti_aliasing=True)
    return np.round(resized * 255).astype(np.uint8)
