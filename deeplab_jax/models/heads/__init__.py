"""Heads: v1 fc6-fc7-fc8 (LargeFOV and Table 1 variants, VGG ASPP) and the v2 ASPP classifiers."""

from deeplab_jax.models.heads.aspp import ASPP_L_RATES, ASPP_S_RATES, LARGEFOV_RATES, ASPPV2
from deeplab_jax.models.heads.largefov import FCHead, VGGASPPHead

__all__ = ["ASPP_L_RATES", "ASPP_S_RATES", "LARGEFOV_RATES", "ASPPV2", "FCHead", "VGGASPPHead"]
