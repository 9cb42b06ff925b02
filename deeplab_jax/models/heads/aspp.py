"""DeepLab-v2 atrous spatial pyramid pooling (ASPP) head (v2 paper §3.2, Fig. 4, §4.1.2).

On ResNet, DeepLab-v2's ASPP is a set of parallel 3x3 atrous *classifiers* (conv with bias, K
outputs) on the last features, one per rate, whose score maps are SUMMED (Caffe Eltwise SUM) — not
the v3 ASPP (1x1 branch, image pooling, BN, concatenation and projection) of `aspp_v3`. ASPP-L uses rates (6, 12, 18, 24), ASPP-S (2, 4, 8, 12); LargeFOV on ResNet is the single-
rate case (3x3, rate 12, §4.1.2 "Employing LargeFOV"). Branches are named c0..c{n-1} (kazuto1011's
names; Caffe's fc1_voc12_c0..c3) and initialised N(0, 0.01) with zero bias as in the release.

Two equal formulations (tested equal; same parameters): 'conv' runs one atrous convolution per
branch (lax.conv_general_dilated with rhs_dilation); 'taps' multiplies the features once by all
branches' taps stacked as one C x (n k k K) matrix and adds the k*k shifted slices of each branch.
Which is faster depends on the input width C: with C = 2048 (ResNet, K = 21 classes) a 3x3 conv
with so few outputs uses a CPU poorly, and its weight gradient through a dilated convolution worse,
so 'taps' is faster; with C = 128 (the demo models) the 36 shifted slices and their transposes
dominate, and 'conv' is faster. 'auto' (default) picks 'taps' from TAPS_MIN_CHANNELS input channels
on.
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from deeplab_jax.models.layers import Conv, check_rates, classifier_normal, tuple_fields

IMPLEMENTATIONS = ("auto", "taps", "conv")
TAPS_MIN_CHANNELS = 1024  # between the two measured widths above (128: conv, 2048: taps)


class _ClassifierParams(nn.Module):
    """The parameters a `Conv` classifier would own ('kernel' HWIO, 'bias'), returned as arrays."""

    features: int
    kernel_size: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, in_channels):
        k = self.kernel_size
        kernel = self.param("kernel", classifier_normal, (k, k, in_channels, self.features),
                            self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        return kernel, bias


def summed_atrous_taps(x_BxhxwxC, kernels, biases, rates):
    """sum_i conv(x, kernels[i], rate=rates[i]) + biases[i] as one matmul plus shifted sums.

    Each tap's [B, h, w, K] score map is cut from the product by a split along the channels and
    shifted by a (cropping) `lax.pad`, so the backward pass is a concatenation of the shifted-back
    gradients. (Padding the whole [B, h, w, n, k, k, K] product once and slicing it made the
    backward pad a gradient of that full size once per tap: 37 x 48 MB per train step at 321 px.)
    """
    k, _, channels, features = kernels[0].shape
    branches = len(kernels)
    height, width = x_BxhxwxC.shape[1:3]
    # (n, k, k, C, K) -> (C, n*k*k*K): every tap of every branch is one column block.
    stacked = jnp.stack(kernels).transpose(3, 0, 1, 2, 4).reshape(channels, -1)
    taps = jnp.split(jnp.einsum("bhwc,cm->bhwm", x_BxhxwxC, stacked), branches * k * k, axis=-1)
    out = sum(biases).reshape(1, 1, 1, features)
    centre = (k - 1) // 2
    for i, rate in enumerate(rates):
        for a in range(k):
            for b in range(k):
                # Output (y, x) reads input (y + dy, x + dx): crop dy rows at the top and add dy
                # zero rows at the bottom (negative dy the other way round); likewise columns.
                dy, dx = (a - centre) * rate, (b - centre) * rate
                if abs(dy) >= height or abs(dx) >= width:
                    continue  # the tap reads only padding
                tap = taps[(i * k + a) * k + b]
                out = out + jax.lax.pad(tap, jnp.zeros((), tap.dtype),
                                        ((0, 0, 0), (-dy, dy, 0), (-dx, dx, 0), (0, 0, 0)))
    return out

ASPP_L_RATES = (6, 12, 18, 24)
ASPP_S_RATES = (2, 4, 8, 12)
LARGEFOV_RATES = (12,)


@dataclasses.dataclass(frozen=True)
class ASPPV2Spec:
    """Settings of the v2 ASPP head: the classifiers' rates (ASPP-L by default) and the dropout
    on the features entering them (0: the release has none on ResNet); hashable."""

    rates: tuple = ASPP_L_RATES
    dropout_rate: float = 0.0

    def __post_init__(self):
        tuple_fields(self, "rates")


class ASPPV2(nn.Module):
    """Sum of parallel 3x3 atrous classifiers; optional dropout on the input (training only)."""

    num_classes: int
    rates: Sequence[int] = ASPP_L_RATES
    kernel_size: int = 3
    dropout_rate: float = 0.0
    implementation: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features_BxhxwxC, train=False):
        rates = check_rates(self.rates, "aspp_rates")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"ASPPV2 implementation={self.implementation!r}; use one of "
                             f"{IMPLEMENTATIONS}")
        if self.dropout_rate:
            features_BxhxwxC = nn.Dropout(self.dropout_rate, deterministic=not train)(
                features_BxhxwxC
            )
        implementation = self.implementation
        if implementation == "auto":
            wide = features_BxhxwxC.shape[-1] >= TAPS_MIN_CHANNELS
            implementation = "taps" if wide else "conv"
        if implementation == "taps" and self.kernel_size % 2 == 1:
            params = [_ClassifierParams(self.num_classes, self.kernel_size, self.param_dtype,
                                        name=f"c{index}")(features_BxhxwxC.shape[-1])
                      for index in range(len(rates))]
            dtype = self.dtype or features_BxhxwxC.dtype
            return summed_atrous_taps(features_BxhxwxC.astype(dtype),
                                      [kernel.astype(dtype) for kernel, _ in params],
                                      [bias.astype(dtype) for _, bias in params], rates)
        logits_BxhxwxK = None
        for index, rate in enumerate(rates):
            branch = Conv(
                self.num_classes, self.kernel_size, rate=rate, kernel_init=classifier_normal,
                dtype=self.dtype, param_dtype=self.param_dtype, name=f"c{index}",
            )(features_BxhxwxC)
            logits_BxhxwxK = branch if logits_BxhxwxK is None else logits_BxhxwxK + branch
        return logits_BxhxwxK
