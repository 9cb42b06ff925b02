"""VGG-16 feature extractor of DeepLab-v1 (v2 paper §3.1, §4.1.1; the DeepLab-LargeFOV release).

VGG-16 made fully convolutional and denser: the released prototxt uses 3x3 max pooling (stride 2,
padding 1) instead of 2x2 for pool1-pool3 "to exactly align responses at different layers", sets
pool4 and pool5 to stride 1 (3x3, padding 1), and turns conv5_1..conv5_3 into atrous convolutions
with rate 2, so the features have output stride 8 (321 -> 161 -> 81 -> 41). Caffe pools round up
(`pool_ceil_mode=True`); for sizes of the form 8k + 1 (321, 513) both rules agree.

Parameters keep the Caffe layer names: conv1_1 ... conv5_3, each {'kernel' (HWIO), 'bias'}.
`VGGSpec.widths` narrows the five blocks (the demo's v1 trains a VGG-16 at 1/8 width from scratch);
the paper's models use VGG-16's own widths.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.models.layers import Conv, max_pool, remat_policy, tuple_fields

# (block name, number of convs, channels) of VGG-16.
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
VGG16_WIDTHS = tuple(channels for _, _, channels in VGG16_BLOCKS)


@dataclasses.dataclass(frozen=True)
class VGGSpec:
    """What the VGG-16 trunk is; hashable. widths: the channels of blocks conv1..conv5."""

    widths: tuple = VGG16_WIDTHS

    def __post_init__(self):
        tuple_fields(self, "widths")
        if len(self.widths) != len(VGG16_BLOCKS) or min(self.widths) < 1:
            raise ValueError(f"widths={self.widths!r}: VGG-16 needs {len(VGG16_BLOCKS)} positive "
                             f"block widths (its own: {VGG16_WIDTHS})")


class ConvReLU(Conv):
    """Conv followed by ReLU, with Conv's parameter names (so rematerialising it keeps the tree)."""

    def __call__(self, x_BxHxWxC):
        return nn.relu(super().__call__(x_BxHxWxC))


class VGG16(nn.Module):
    """conv1_1..conv5_3 + pool1..pool5 of DeepLab-v1; returns output-stride-8, 512-channel features.

    Only output stride 8 is built (the paper's v1): a VGG at stride 16 is not an exact atrous
    re-sampling of this one because pool5 keeps its 3x3 window after its stride is removed.
    """

    spec: VGGSpec = VGGSpec()
    conv5_rate: int = 2
    pool_ceil_mode: bool = True
    remat: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWx3, train=False):
        del train  # no BatchNorm or dropout in the VGG trunk
        conv_cls = nn.remat(ConvReLU, policy=remat_policy(self.remat)) if self.remat else ConvReLU
        x = x_BxHxWx3
        for (block, num_convs, _), channels in zip(VGG16_BLOCKS, self.spec.widths):
            rate = self.conv5_rate if block == 5 else 1
            for index in range(1, num_convs + 1):
                x = conv_cls(
                    channels, 3, rate=rate, dtype=self.dtype, param_dtype=self.param_dtype,
                    name=f"conv{block}_{index}",
                )(x)
            # pool1-3 stride 2 (output stride 8 after pool3); pool4/pool5 stride 1.
            x = max_pool(x, 3, 2 if block <= 3 else 1, 1, ceil_mode=self.pool_ceil_mode)
        return x
