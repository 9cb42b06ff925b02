"""Fixtures shared by the dense-CRF tests."""

import numpy as np
import pytest

from . import cluster_probs, photo


@pytest.fixture(scope="module")
def small_batch():
    """Two 20x24 photographs and 3-class probabilities (jit/vmap/grad tests)."""
    images = np.stack([photo("astronaut", 20, 24), photo("coffee", 20, 24)])
    probs = np.stack([cluster_probs(image, 3, seed=seed)[0] for seed, image in enumerate(images)])
    return images, probs
