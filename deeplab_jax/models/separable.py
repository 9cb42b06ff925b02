"""Atrous depthwise-separable convolution (DeepLab-v3+ paper, Chen et al. 2018, §3.1 and Fig. 3).

A k x k convolution from C to F channels is factorised into a *depthwise* k x k convolution (one
filter per input channel: `feature_group_count = C`), which may be atrous (`rhs_dilation = rate`),
followed by a *pointwise* 1x1 convolution that mixes channels. The v3+ paper calls the combination
"atrous separable convolution" and uses it in ASPP, in the decoder and throughout the modified
aligned Xception. Its cost is k^2 C + C F multiply-adds per pixel instead of k^2 C F.

Two placements of BatchNorm/ReLU exist in the authors' TF release (models/research/deeplab):
- ASPP and decoder (`core/utils.py` split_separable_conv2d): depthwise -> BN -> ReLU -> pointwise
  -> BN -> ReLU (`depthwise_relu=True, relu=True`, the default here);
- Xception units (`core/xception.py`): BN after the depthwise conv *and* after the pointwise conv
  ("extra batch normalization ... after each 3x3 depthwise convolution", v3+ §3.2); the ReLU sits
  before each separable conv (pre-activation), except in the last exit-flow block where it follows
  both convs. `Xception` picks the flags.

Speed: XLA:CPU's grouped convolution is slow for depthwise kernels, so programs lowered for a CPU
compute them as shifted copies (`layers.depthwise_taps`: Xception-65's gradients 5x faster,
benchmarks/README.md "Depthwise"); with gradients they take 0.7-4.7x PyTorch's time there. The
v3+ demo recipe (configs/demo.py:v3plus) uses separable ASPP and decoder convs, as the paper.

Parameter tree: depthwise/{conv/kernel (k, k, 1, C), bn/{scale, bias}},
pointwise/{conv/kernel (1, 1, C, F), bn/{scale, bias}} (TF: <name>_depthwise/depthwise_weights of
shape (k, k, C, 1) and <name>_pointwise/weights; BatchNorm gamma/beta). No conv biases: BN follows.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.models.layers import ConvBN, NormConfig


class SeparableConvBN(nn.Module):
    """Depthwise k x k (atrous, strided) conv + BN (+ ReLU), then pointwise 1x1 conv + BN (+ ReLU).

    Padding is symmetric rate * (k - 1) / 2 on both convs' inputs, the explicit padding TF's
    `separable_conv2d_same` applies for strided convs (and the same as 'SAME' at stride 1).
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    rate: int = 1
    depthwise_relu: bool = True
    relu: bool = True
    norm: NormConfig = NormConfig()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC, train=False):
        channels = x_BxHxWxC.shape[-1]
        unit = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
        x = ConvBN(
            channels, self.kernel_size, stride=self.stride, rate=self.rate, groups=channels,
            relu=self.depthwise_relu, name="depthwise", **unit,
        )(x_BxHxWxC, train)
        return ConvBN(self.features, 1, relu=self.relu, name="pointwise", **unit)(x, train)


def conv_or_separable(features, kernel_size=3, rate=1, *, separable=False, name=None, **unit):
    """A k x k conv + BN + ReLU: `ConvBN` (submodules conv/bn) or, with `separable=True` and
    k > 1, `SeparableConvBN` (depthwise/pointwise). Both are called as `module(x, train)`.

    The switch the v3+ paper ablates in Table 5 ("SC": separable convs in ASPP and decoder).
    """
    if separable and kernel_size > 1:
        return SeparableConvBN(features, kernel_size, rate=rate, name=name, **unit)
    return ConvBN(features, kernel_size, rate=rate, name=name, **unit)
