"""Backbones: VGG-16 (DeepLab-v1), atrous ResNet-50/101 (v2, v3), aligned Xception-65 (v3+)."""

from deeplab_jax.models.backbones.resnet import ResNet
from deeplab_jax.models.backbones.vgg import VGG16
from deeplab_jax.models.backbones.xception import Xception

__all__ = ["ResNet", "VGG16", "Xception"]
