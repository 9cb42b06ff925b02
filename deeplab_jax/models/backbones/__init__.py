"""Backbones: VGG-16 (DeepLab-v1) and atrous ResNet-50/101 (DeepLab-v2)."""

from deeplab_jax.models.backbones.resnet import ResNet
from deeplab_jax.models.backbones.vgg import VGG16

__all__ = ["ResNet", "VGG16"]
