"""DeepLab-v3 atrous spatial pyramid pooling with batch norm and image pooling (v3 paper, §3.3).

Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation" (2017), §3.3: ASPP on
the last features is (a) one 1x1 conv and three 3x3 atrous convs with rates (6, 12, 18) at output
stride 16 (doubled at output stride 8), all with 256 filters and batch normalisation, and (b)
image-level features: global average pooling, a 1x1 conv with 256 filters + BN, bilinearly
upsampled to the feature size (from 1x1 that is a broadcast). The five maps are concatenated and
projected by a 1x1 conv with 256 filters + BN, before the final 1x1 classifier. ReLU follows
every BN; the TF release (models/research/deeplab `model.py`) applies dropout (keep 0.9) after the
projection. The v3+ paper (§3.1) makes the 3x3 branches atrous *separable* convs as an option.

Rates are given at the features' actual stride here; `rates_for_output_stride` turns the paper's
"rates at output stride 16" into them, so one set of weights runs at OS 16 (training) and OS 8
(evaluation) with rates (6, 12, 18) and (12, 24, 36) (v3 paper §4.1 / Table 4).

Parameter tree (concatenation order image_pooling, aspp0, aspp1.. as TF's `concat_projection`):
  image_pooling/{conv, bn}, aspp0/{conv, bn}, aspp{1..n}/{conv, bn} (or {depthwise, pointwise}
  when separable), concat_projection/{conv, bn}. torchvision's ASPP holds the same tensors as
  convs.0 (1x1), convs.1-3 (atrous), convs.4 (pooling) and project; its concatenation puts pooling
  last, so its `project` kernel's input rows are ours rotated by one 256-block.
`DeepLabV3Head` adds the classifier 'logits' (1x1, bias, N(0, 0.01)) and, for torchvision's
`DeepLabHead` layout, an extra 3x3 conv + BN + ReLU ('conv3x3') between projection and classifier.
The heads take their settings as one `ASPPSpec`.
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.models.layers import (
    Conv,
    ConvBN,
    NormConfig,
    check_rates,
    classifier_normal,
    tuple_fields,
)
from deeplab_jax.models.separable import conv_or_separable

DEEPLAB_V3_RATES = (6, 12, 18)  # at output stride 16 (v3 paper §3.3)
REFERENCE_OUTPUT_STRIDE = 16


def rates_for_output_stride(rates_at_os16, output_stride):
    """Rates at `output_stride` for ASPP rates given at output stride 16 (6, 12, 18 -> 12, 24, 36
    at OS 8; 3, 6, 9 at OS 32). Raises when a rate would not be an integer."""
    rates = check_rates(rates_at_os16, "aspp_rates")
    if isinstance(output_stride, bool) or not isinstance(output_stride, int) or output_stride < 1:
        raise ValueError(f"output_stride must be a positive int, got {output_stride!r}")
    scaled = []
    for rate in rates:
        numerator = rate * REFERENCE_OUTPUT_STRIDE
        if numerator % output_stride:
            raise ValueError(
                f"aspp_rates={rates!r} are rates at output stride {REFERENCE_OUTPUT_STRIDE}; at "
                f"output_stride={output_stride} rate {rate} would become "
                f"{numerator / output_stride:g}, not an integer; choose rates r with "
                f"r * {REFERENCE_OUTPUT_STRIDE} divisible by {output_stride}"
            )
        scaled.append(int(numerator // output_stride))
    return tuple(scaled)


@dataclasses.dataclass(frozen=True)
class ASPPSpec:
    """Settings of the v3 ASPP head; hashable (a module attribute).

    rates: the 3x3 branches' rates. A model factory takes them at output stride 16, as the papers
    state them, and hands `at_output_stride(os)` to the head, whose rates are at its input's
    stride. features: channels of every branch and of the projection (256 in the papers).
    image_pooling, separable, dropout_rate: as `ASPPV3`. extra_conv3x3: torchvision's
    `DeepLabHead` layout (v3 head only: the v3+ decoder has 3x3 convs of its own).
    """

    rates: tuple = DEEPLAB_V3_RATES
    features: int = 256
    image_pooling: bool = True
    separable: bool = False
    dropout_rate: float = 0.1
    extra_conv3x3: bool = False

    def __post_init__(self):
        tuple_fields(self, "rates")

    def at_output_stride(self, output_stride):
        """This spec with `rates` (given at output stride 16) scaled to `output_stride`."""
        return dataclasses.replace(self, rates=rates_for_output_stride(self.rates, output_stride))


class ASPPV3(nn.Module):
    """features (B, h, w, C) -> projected ASPP features (B, h, w, `features`).

    rates: the atrous rates of the 3x3 branches at the input's stride (see module docstring).
    image_pooling=False drops the image-level branch (the v3+ Cityscapes X-71 variant).
    """

    features: int = 256
    rates: Sequence[int] = DEEPLAB_V3_RATES
    image_pooling: bool = True
    separable: bool = False
    dropout_rate: float = 0.1
    norm: NormConfig = NormConfig()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features_BxhxwxC, train=False):
        if features_BxhxwxC.ndim != 4:
            raise ValueError(f"ASPP expects BxhxwxC features, got shape {features_BxhxwxC.shape}")
        rates = check_rates(self.rates, "aspp_rates")
        unit = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
        batch, height, width, _ = features_BxhxwxC.shape
        branches = []
        if self.image_pooling:
            # Global average in float32 (a sum over many pixels), then the 1x1 conv + BN + ReLU.
            pooled_Bx1x1xC = jnp.mean(
                features_BxhxwxC.astype(jnp.float32), axis=(1, 2), keepdims=True
            ).astype(features_BxhxwxC.dtype)
            pooled_Bx1x1xF = ConvBN(self.features, 1, name="image_pooling", **unit)(
                pooled_Bx1x1xC, train)
            # Bilinear upsampling of a 1x1 map (TF and torchvision) is a broadcast.
            branches.append(
                jnp.broadcast_to(pooled_Bx1x1xF, (batch, height, width, self.features)))
        branches.append(ConvBN(self.features, 1, name="aspp0", **unit)(features_BxhxwxC, train))
        for index, rate in enumerate(rates):
            branches.append(conv_or_separable(
                self.features, 3, rate=rate, separable=self.separable, name=f"aspp{index + 1}",
                **unit,
            )(features_BxhxwxC, train))
        x = jnp.concatenate(branches, axis=-1)
        x = ConvBN(self.features, 1, name="concat_projection", **unit)(x, train)
        if self.dropout_rate:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return x


def aspp_from_spec(spec, *, norm, dtype, param_dtype):
    """The `ASPPV3` submodule 'aspp' of a head with settings `spec` (rates at the input stride)."""
    return ASPPV3(
        features=spec.features, rates=spec.rates, image_pooling=spec.image_pooling,
        separable=spec.separable, dropout_rate=spec.dropout_rate, norm=norm, dtype=dtype,
        param_dtype=param_dtype, name="aspp",
    )


def classifier(num_classes, *, dtype, param_dtype):
    """The 1x1 classifier 'logits' (bias, N(0, 0.01) init) that ends the v3 and v3+ heads."""
    return Conv(num_classes, 1, kernel_init=classifier_normal, dtype=dtype,
                param_dtype=param_dtype, name="logits")


class DeepLabV3Head(nn.Module):
    """ASPP (v3) -> [3x3 conv + BN + ReLU] -> 1x1 classifier: logits at the features' stride."""

    num_classes: int
    aspp: ASPPSpec = ASPPSpec()
    norm: NormConfig = NormConfig()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features_BxhxwxC, train=False):
        unit = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
        x = aspp_from_spec(self.aspp, **unit)(features_BxhxwxC, train)
        if self.aspp.extra_conv3x3:
            x = ConvBN(self.aspp.features, 3, name="conv3x3", **unit)(x, train)
        return classifier(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x)
