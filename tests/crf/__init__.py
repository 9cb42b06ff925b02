"""Shared truths and inputs for the dense-CRF tests.

* `photo`: scikit-image photographs, resized (real colour statistics, small for speed).
* `cluster_probs`: realistic-looking softmax probabilities: colour clusters of the photo, as one-hot
  logits, blurred and made noisy (so the CRF has work to do).
* `brute_force_crf`: the dense CRF with exact Gaussian kernels, O(N^2) in float64 (independent of
  every lattice); used on images of a few hundred pixels.
* `pydensecrf_crf`: Krähenbühl's C++ code through pydensecrf2, fed the same numbers.
"""

import numpy as np
import scipy.ndimage

try:
    import pydensecrf.densecrf as _pydensecrf
except ImportError:  # pragma: no cover - CI installs it
    _pydensecrf = None

PYDENSECRF_MISSING = (
    "pydensecrf2 is not installed (the reference implementation); install it with "
    "`pip install pydensecrf2` (builds with g++)")


def photo(name, height, width):
    import skimage.data
    import skimage.transform

    image = getattr(skimage.data, name)()[..., :3]
    resized = skimage.transform.resize(image, (height, width), anti_aliasing=True)
    return np.round(resized * 255).astype(np.uint8)


def cluster_probs(image, num_classes, seed=0, noise=1.0, blur=1.0):
    """Softmax of noisy, blurred one-hot logits of a k-means colour clustering of `image`."""
    rng = np.random.default_rng(seed)
    pixels = image.reshape(-1, 3).astype(np.float32)
    centres = pixels[rng.choice(len(pixels), num_classes, replace=False)]
    for _ in range(6):
        assignment = ((pixels[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        for k in range(num_classes):
            if np.any(assignment == k):
                centres[k] = pixels[assignment == k].mean(0)
    labels = assignment.reshape(image.shape[:2])
    logits = 2.5 * np.eye(num_classes, dtype=np.float32)[labels]
    logits = scipy.ndimage.gaussian_filter(logits, (blur, blur, 0))
    logits += noise * rng.standard_normal(logits.shape).astype(np.float32)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)).astype(np.float32), labels


def gaussian_kernel_matrix(features_Nxd):
    """K_ij = exp(-|f_i - f_j|^2 / 2) in float64, self included."""
    features = features_Nxd.astype(np.float64)
    squared = ((features[:, None, :] - features[None, :, :]) ** 2).sum(-1)
    return np.exp(-0.5 * squared)


def features(image, params):
    """(gaussian, bilateral) feature matrices: (x, y)/pos_xy_std and (x, y, r, g, b)/std."""
    height, width, _ = image.shape
    ys, xs = np.mgrid[:height, :width].astype(np.float64)
    position = np.stack([xs.ravel(), ys.ravel()], axis=1)
    gaussian = position / params.pos_xy_std
    colour = image.reshape(-1, 3).astype(np.float64)
    bilateral = np.concatenate([position / params.bi_xy_std, colour / params.bi_rgb_std], axis=1)
    return gaussian, bilateral


def normalized_message(kernel_NxN, values_NxK):
    """n * K (n * v) with n = 1 / sqrt(K 1): the symmetric normalisation of the model."""
    norm = 1.0 / np.sqrt(kernel_NxN.sum(1))
    return norm[:, None] * (kernel_NxN @ (norm[:, None] * values_NxK))


def brute_force_crf(image, probs, params):
    """Mean-field inference with exact kernels, float64; returns Q [H, W, K]."""
    height, width, num_classes = probs.shape
    gaussian, bilateral = features(image, params)
    spatial_kernel = gaussian_kernel_matrix(gaussian)
    bilateral_kernel = gaussian_kernel_matrix(bilateral)
    neg_unary = np.log(np.clip(probs.reshape(-1, num_classes).astype(np.float64), 1e-5, 1.0))
    q = softmax(neg_unary)
    for _ in range(params.iterations):
        q = softmax(neg_unary
                    + params.pos_w * normalized_message(spatial_kernel, q)
                    + params.bi_w * normalized_message(bilateral_kernel, q))
    return q.reshape(height, width, num_classes)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def pydensecrf_available():
    return _pydensecrf is not None


def pydensecrf_crf(image, probs, params):
    """The reference: pydensecrf2's DenseCRF2D with DeepLab's two kernels; returns Q [H, W, K]."""
    height, width, num_classes = probs.shape
    crf = _pydensecrf.DenseCRF2D(width, height, num_classes)
    unary = -np.log(np.clip(probs, 1e-5, 1.0)).astype(np.float32)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(-1, num_classes).T))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std,
                             rgbim=np.ascontiguousarray(image), compat=params.bi_w)
    q = np.array(crf.inference(params.iterations), dtype=np.float32)
    return q.reshape(num_classes, height, width).transpose(1, 2, 0)
