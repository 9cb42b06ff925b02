"""DeepLab-v2 atrous spatial pyramid pooling (ASPP) head (v2 paper §3.2, Fig. 4, §4.1.2).

On ResNet, DeepLab-v2's ASPP is a set of parallel 3x3 atrous *classifiers* (conv with bias, K
outputs) on the last features, one per rate, whose score maps are SUMMED (Caffe Eltwise SUM) — not
the v3 ASPP (1x1 branch, image pooling, BN, concatenation and projection), which will live next to
this one. ASPP-L uses rates (6, 12, 18, 24), ASPP-S (2, 4, 8, 12); LargeFOV on ResNet is the single-
rate case (3x3, rate 12, §4.1.2 "Employing LargeFOV"). Branches are named c0..c{n-1} (kazuto1011's
names; Caffe's fc1_voc12_c0..c3) and initialised N(0, 0.01) with zero bias as in the release.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.models.layers import Conv, check_rates, classifier_normal

ASPP_L_RATES = (6, 12, 18, 24)
ASPP_S_RATES = (2, 4, 8, 12)
LARGEFOV_RATES = (12,)


class ASPPV2(nn.Module):
    """Sum of parallel 3x3 atrous classifiers; optional dropout on the input (training only)."""

    num_classes: int
    rates: Sequence[int] = ASPP_L_RATES
    kernel_size: int = 3
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features_BxhxwxC, train=False):
        rates = check_rates(self.rates, "aspp_rates")
        if self.dropout_rate:
            features_BxhxwxC = nn.Dropout(self.dropout_rate, deterministic=not train)(
                features_BxhxwxC
            )
        logits_BxhxwxK = None
        for index, rate in enumerate(rates):
            branch = Conv(
                self.num_classes, self.kernel_size, rate=rate, kernel_init=classifier_normal,
                dtype=self.dtype, param_dtype=self.param_dtype, name=f"c{index}",
            )(features_BxhxwxC)
            logits_BxhxwxK = branch if logits_BxhxwxK is None else logits_BxhxwxK + branch
        return logits_BxhxwxK
