"""Heads: v1 fc6-fc7-fc8 (LargeFOV, Table 1, VGG ASPP), v2 ASPP, v3 ASPP, v3+ decoder."""

from deeplab_jax.models.heads.aspp import ASPP_L_RATES, ASPP_S_RATES, LARGEFOV_RATES, ASPPV2
from deeplab_jax.models.heads.aspp_v3 import ASPPV3, DeepLabV3Head, rates_for_output_stride
from deeplab_jax.models.heads.decoder import DecoderV3Plus, DeepLabV3PlusHead
from deeplab_jax.models.heads.largefov import FCHead, VGGASPPHead

__all__ = [
    "ASPP_L_RATES", "ASPP_S_RATES", "LARGEFOV_RATES", "ASPPV2", "ASPPV3", "DecoderV3Plus",
    "DeepLabV3Head", "DeepLabV3PlusHead", "FCHead", "VGGASPPHead", "rates_for_output_stride",
]
