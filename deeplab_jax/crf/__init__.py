"""Dense CRF post-processing (DeepLab v1/v2 §3.3; Krähenbühl & Koltun, NeurIPS 2011).

    from deeplab_jax.crf import dense_crf, CRFParams
    q = dense_crf(image_HxWx3_uint8, probs_HxWxK, params=CRFParams(), method="meanfield")

`method="meanfield"`: pure JAX (jit, vmap, grad), on the default device, bilateral kernel on a
permutohedral lattice. `method="permutohedral"`: exact host version in numpy/scipy (the reference
for the others). `method="separable"`: pure JAX of dense matrix products only (separable bilateral
filtering, `deeplab_jax.crf.separable`; no sort, scatter or 64-bit integers: TPU-ready), ~98%
labels equal to the exact CRF on photographs and ~90% of its mIoU gain on the demo data.
`method="auto"`: chosen by backend (`auto_method`).
`deeplab_jax.crf.tune` is the command line of the paper's coarse-to-fine parameter search
(§4.1.1, `deeplab_jax.evaluation.crf_search`).
"""

from deeplab_jax.crf.api import METHODS, PROBS_SUM_TOLERANCE, auto_method, dense_crf
from deeplab_jax.crf.params import (
    DEEPLAB_V1,
    DEEPLAB_V1_RANGE,
    DEEPLAB_V2,
    PAPER_COARSE_GRID,
    CRFParams,
)

__all__ = [
    "CRFParams",
    "DEEPLAB_V1",
    "DEEPLAB_V1_RANGE",
    "DEEPLAB_V2",
    "METHODS",
    "PAPER_COARSE_GRID",
    "PROBS_SUM_TOLERANCE",
    "auto_method",
    "dense_crf",
]
