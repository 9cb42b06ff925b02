"""Backbones: VGG-16 (DeepLab-v1), atrous ResNet-50/101 (v2, v3), aligned Xception-65 (v3+)."""

from deeplab_jax.models.backbones.resnet import ResNet, ResNetSpec
from deeplab_jax.models.backbones.vgg import VGG16
from deeplab_jax.models.backbones.xception import Xception, XceptionSpec

__all__ = ["ResNet", "ResNetSpec", "VGG16", "Xception", "XceptionSpec"]
