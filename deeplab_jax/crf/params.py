"""Parameters of the fully connected CRF (Krähenbühl & Koltun 2011; DeepLab-v2 paper §3.3, §4.1.1).

The pairwise potential is

    k(i, j) = w1 * exp(-|p_i - p_j|^2 / (2 theta_alpha^2) - |I_i - I_j|^2 / (2 theta_beta^2))
            + w2 * exp(-|p_i - p_j|^2 / (2 theta_gamma^2))

with p the pixel position and I the raw 0..255 RGB colour. In the names of the Caffe layer that
DeepLab ships (and of pydensecrf): w1 = bi_w, theta_alpha = bi_xy_std, theta_beta = bi_rgb_std,
w2 = pos_w, theta_gamma = pos_xy_std. Ten mean-field iterations are used throughout the paper.

`CRFParams` is a JAX pytree whose leaves are the two weights (so `jax.grad` can differentiate
through them) while the iteration count and the standard deviations are static metadata: they fix
the shapes of the mean-field computation, so a change recompiles. This module does not import JAX
(the host permutohedral path runs without it); the pytree is registered as soon as JAX is present
(at import if JAX is already loaded, else when `deeplab_jax.crf.meanfield` or `tune` is imported).
"""

import dataclasses
import math
import sys


@dataclasses.dataclass(frozen=True)
class CRFParams:
    """Dense-CRF parameters; the defaults are DeepLab-v2's (ResNet-101, VOC 2012)."""

    iterations: int = 10
    bi_w: float = 4.0
    bi_xy_std: float = 67.0
    bi_rgb_std: float = 3.0
    pos_w: float = 3.0
    pos_xy_std: float = 1.0

    def validate(self):
        """Raises ValueError naming the field when a value is unusable; returns self."""
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int):
            raise ValueError(
                f"CRFParams.iterations must be a Python int, got {self.iterations!r}; "
                "pass e.g. iterations=10")
        if self.iterations < 0:
            raise ValueError(f"CRFParams.iterations must be >= 0, got {self.iterations}")
        for name in ("bi_xy_std", "bi_rgb_std", "pos_xy_std"):
            value = getattr(self, name)
            if not _is_positive_number(value):
                raise ValueError(
                    f"CRFParams.{name} must be a positive finite number (a standard deviation in "
                    f"pixels or colour levels), got {value!r}")
        for name in ("bi_w", "pos_w"):
            value = getattr(self, name)
            # Weights may be tracers (under jax.grad / jit); only check concrete numbers.
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise ValueError(f"CRFParams.{name} must be finite, got {value!r}")
        return self

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_config(cls, config_crf):
        """The validated parameters of a config's `crf` section (iterations, bi_w, bi_xy_std, ...)."""
        return cls(iterations=int(config_crf.iterations), bi_w=float(config_crf.bi_w),
                   bi_xy_std=float(config_crf.bi_xy_std), bi_rgb_std=float(config_crf.bi_rgb_std),
                   pos_w=float(config_crf.pos_w),
                   pos_xy_std=float(config_crf.pos_xy_std)).validate()


def _is_positive_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


_registered = False


def register_pytree():
    """Registers CRFParams with JAX (idempotent): leaves bi_w, pos_w; the rest static."""
    global _registered
    if _registered:
        return
    import jax  # deferred: see the module docstring

    jax.tree_util.register_dataclass(
        CRFParams,
        data_fields=["bi_w", "pos_w"],
        meta_fields=["iterations", "bi_xy_std", "bi_rgb_std", "pos_xy_std"],
    )
    _registered = True


if "jax" in sys.modules:
    register_pytree()

# DeepLab-v2 (ResNet-101) on PASCAL VOC 2012, the released deploy prototxt: w1=4, theta_alpha=67,
# theta_beta=3, w2=3, theta_gamma=1.
DEEPLAB_V2 = CRFParams()

# DeepLab-v1 (VGG-16 variants): bi_w=4, pos_w=3, pos_xy_std=3 and, cross-validated per variant,
# bi_xy_std in 49..65 and bi_rgb_std in 3..5. DEEPLAB_V1 takes one end of the range;
# DEEPLAB_V1_RANGE states the span (the tests check the mean-field accuracy at both corners).
DEEPLAB_V1 = CRFParams(bi_w=4.0, bi_xy_std=65.0, bi_rgb_std=5.0, pos_w=3.0, pos_xy_std=3.0)
DEEPLAB_V1_RANGE = {"bi_xy_std": (49.0, 65.0), "bi_rgb_std": (3.0, 5.0)}

# The paper's coarse search grid (§4.1.1): w2 = 3 and theta_gamma = 3 fixed; w1 in [3:6],
# theta_alpha in [30:10:100], theta_beta in [3:6] (MATLAB notation).
PAPER_COARSE_GRID = {
    "bi_w": (3.0, 4.0, 5.0, 6.0),
    "bi_xy_std": tuple(float(v) for v in range(30, 101, 10)),
    "bi_rgb_std": (3.0, 4.0, 5.0, 6.0),
    "pos_w": (3.0,),
    "pos_xy_std": (3.0,),
}
