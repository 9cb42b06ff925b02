"""DeepLab-v1 fully connected head: fc6 (atrous) -> fc7 -> fc8 on VGG-16 (v2 paper §3.1, §4.1.1).

VGG-16's fully connected layers become convolutions. Table 1 varies fc6:
  direct adaptation  7x7, rate 4, 4096 channels (134.3M parameters in all)
  DeepLab            4x4, rate 4 or rate 8, 4096 channels
  DeepLab-LargeFOV   3x3, rate 12, 1024 channels (20.5M parameters in all)
then fc7 is 1x1 (same width), each followed by ReLU and dropout 0.5, and fc8 is the 1x1 classifier
(N(0, 0.01) init, zero bias). The released LargeFOV prototxt also has `pool5a`, a 3x3 stride-1
average pooling (padding 1) between pool5 and fc6; `pool5a=True` adds it (no parameters).
`VGGASPPHead` is the VGG-16 ASPP of §4.1.2 / Fig. 7: parallel fc6-fc7-fc8 branches with fc6 rates
(2, 4, 8, 12) (ASPP-S) or (6, 12, 18, 24) (ASPP-L), whose fc8 scores are summed.
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.models.layers import Conv, avg_pool, check_rates, classifier_normal, tuple_fields


@dataclasses.dataclass(frozen=True)
class VGGHeadSpec:
    """Settings of the head on VGG-16 (defaults: DeepLab-LargeFOV); hashable.

    fc6_kernel, fc6_rate: fc6's kernel size and atrous rate (Table 1). width: fc6 and fc7
    channels. pool5a: the LargeFOV release's 3x3 average pooling before fc6. dropout_rate: after
    fc6 and fc7. aspp_rates: None for one fc6-fc7-fc8 head (`FCHead`), or the fc6 rates of the
    VGG ASPP (`VGGASPPHead`, whose 3x3 branches ignore fc6_kernel, fc6_rate and pool5a).
    """

    fc6_kernel: int = 3
    fc6_rate: int = 12
    width: int = 1024
    pool5a: bool = True
    dropout_rate: float = 0.5
    aspp_rates: tuple | None = None

    def __post_init__(self):
        tuple_fields(self, "aspp_rates")


class FCHead(nn.Module):
    """fc6 (k x k, rate r) -> ReLU -> dropout -> fc7 (1x1) -> ReLU -> dropout -> fc8 classifier."""

    num_classes: int
    fc6_kernel: int = 3
    fc6_rate: int = 12
    width: int = 1024
    dropout_rate: float = 0.5
    pool5a: bool = True
    pool_ceil_mode: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features_BxhxwxC, train=False):
        x = features_BxhxwxC
        if self.pool5a:
            x = avg_pool(x, 3, 1, 1, ceil_mode=self.pool_ceil_mode)
        conv = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.relu(Conv(self.width, self.fc6_kernel, rate=self.fc6_rate, name="fc6", **conv)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(Conv(self.width, 1, name="fc7", **conv)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return Conv(self.num_classes, 1, kernel_init=classifier_normal, name="fc8", **conv)(x)


class VGGASPPHead(nn.Module):
    """Parallel FCHead branches c0..c{n-1} (3x3 fc6 at each rate), scores summed (Fig. 7)."""

    num_classes: int
    rates: Sequence[int] = (6, 12, 18, 24)
    width: int = 1024
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features_BxhxwxC, train=False):
        logits_BxhxwxK = None
        for index, rate in enumerate(check_rates(self.rates, "aspp_rates")):
            branch = FCHead(
                self.num_classes, 3, rate, self.width, self.dropout_rate, pool5a=False,
                dtype=self.dtype, param_dtype=self.param_dtype, name=f"c{index}",
            )(features_BxhxwxC, train)
            logits_BxhxwxK = branch if logits_BxhxwxK is None else logits_BxhxwxK + branch
        return logits_BxhxwxK
