"""DeepLab-v3+ decoder (Chen et al. 2018, "Encoder-Decoder with Atrous Separable Convolution", §3.1,
Fig. 2, and the decoder ablations of §4.1, Tables 1-2).

The encoder output (DeepLab-v3 ASPP features at output stride 16) is bilinearly upsampled to the
low-level features' size (stride 4, "x4"), and concatenated with those low-level features after a
1x1 conv reduces them to 48 channels (Table 1: 48 is best) so that they do not outweigh the 256
encoder channels. Two 3x3 convs with 256 filters (Table 2: best, "[3x3, 256] x 2" on Conv2) refine
the result; the classifier follows and its logits are bilinearly upsampled x4 by the caller (our
models return logits at stride 4; losses and evaluation bring them to the input size). Every conv
is followed by BN and ReLU; `separable=True` makes the 3x3 convs atrous separable (§3.1, Table 5).

Upsampling uses align_corners=True (TF release: resize_bilinear with align_corners=True), which
puts encoder logit i on low-level position i * (os / 4) when sizes are aligned (h = k * os + 1).

Parameter tree (TF scope names): feature_projection0/{conv, bn}, decoder_conv{0, 1}/{conv, bn}
(or {depthwise, pointwise}/{conv, bn}); `DeepLabV3PlusHead` adds aspp/... and logits/.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.models.heads.aspp_v3 import ASPPSpec, aspp_from_spec, classifier
from deeplab_jax.models.layers import ConvBN, NormConfig
from deeplab_jax.models.resize import resize_bilinear
from deeplab_jax.models.separable import conv_or_separable


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    """Settings of the v3+ decoder (defaults: the paper's best, Tables 1-2); hashable.

    enabled: a model factory builds the v3+ head (False: the v3 head; the other fields then
    only keep their defaults). low_level_features: channels the stride-4 features are reduced to
    (48). features: channels of the two 3x3 convs (256). separable: atrous separable 3x3 convs.
    """

    enabled: bool = True
    low_level_features: int = 48
    features: int = 256
    separable: bool = False


class DecoderV3Plus(nn.Module):
    """(encoder BxhxwxC, low-level BxHxWxD) -> refined features BxHxWx`features`."""

    low_level_features: int = 48
    features: int = 256
    num_convs: int = 2
    separable: bool = False
    norm: NormConfig = NormConfig()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, encoder_BxhxwxC, low_level_BxHxWxD, train=False):
        if encoder_BxhxwxC.ndim != 4 or low_level_BxHxWxD.ndim != 4:
            raise ValueError(
                "the v3+ decoder expects BxhxwxC encoder and BxHxWxD low-level features, got "
                f"{encoder_BxhxwxC.shape} and {low_level_BxHxWxD.shape}"
            )
        if encoder_BxhxwxC.shape[0] != low_level_BxHxWxD.shape[0]:
            raise ValueError(
                f"batch sizes differ: encoder {encoder_BxhxwxC.shape}, low-level "
                f"{low_level_BxHxWxD.shape}"
            )
        unit = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
        low_BxHxWxL = ConvBN(self.low_level_features, 1, name="feature_projection0", **unit)(
            low_level_BxHxWxD, train)
        upsampled_BxHxWxC = resize_bilinear(
            encoder_BxhxwxC, low_BxHxWxL.shape[1:3], align_corners=True
        ).astype(low_BxHxWxL.dtype)
        x = jnp.concatenate([upsampled_BxHxWxC, low_BxHxWxL], axis=-1)
        for index in range(self.num_convs):
            x = conv_or_separable(
                self.features, 3, separable=self.separable, name=f"decoder_conv{index}", **unit
            )(x, train)
        return x


class DeepLabV3PlusHead(nn.Module):
    """ASPP (v3) on the encoder features -> decoder with the low-level features -> classifier.

    Called as head(features, low_level_features, train); `uses_low_level_features` tells
    `DeepLab` to fetch the backbone's stride-4 endpoint. `aspp.rates` are at the features' stride.
    """

    uses_low_level_features = True

    num_classes: int
    aspp: ASPPSpec = ASPPSpec()
    decoder: DecoderSpec = DecoderSpec()
    norm: NormConfig = NormConfig()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        if self.aspp.extra_conv3x3:
            raise ValueError(
                "extra_conv3x3 (torchvision's v3 head) does not apply with decoder=True")
        super().__post_init__()

    @nn.compact
    def __call__(self, features_BxhxwxC, low_level_BxHxWxD, train=False):
        unit = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
        encoder = aspp_from_spec(self.aspp, **unit)(features_BxhxwxC, train)
        x = DecoderV3Plus(
            low_level_features=self.decoder.low_level_features, features=self.decoder.features,
            separable=self.decoder.separable, name="decoder", **unit,
        )(encoder, low_level_BxHxWxD, train)
        return classifier(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype)(x)
