"""Heads: v1 fc6-fc7-fc8 (LargeFOV, Table 1, VGG ASPP), v2 ASPP, v3 ASPP, v3+ decoder."""

from deeplab_jax.models.heads.aspp import (
    ASPP_L_RATES,
    ASPP_S_RATES,
    LARGEFOV_RATES,
    ASPPV2,
    ASPPV2Spec,
)
from deeplab_jax.models.heads.aspp_v3 import (
    ASPPV3,
    ASPPSpec,
    DeepLabV3Head,
    rates_for_output_stride,
)
from deeplab_jax.models.heads.decoder import DecoderSpec, DecoderV3Plus, DeepLabV3PlusHead
from deeplab_jax.models.heads.largefov import FCHead, VGGASPPHead, VGGHeadSpec

__all__ = [
    "ASPP_L_RATES", "ASPP_S_RATES", "LARGEFOV_RATES", "ASPPSpec", "ASPPV2", "ASPPV2Spec",
    "ASPPV3", "DecoderSpec", "DecoderV3Plus", "DeepLabV3Head", "DeepLabV3PlusHead", "FCHead",
    "VGGASPPHead", "VGGHeadSpec", "rates_for_output_stride",
]
