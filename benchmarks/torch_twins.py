"""PyTorch reference models for the accelerator benchmark (same architectures as ours).

- DeepLab-v2 ResNet-101 ASPP-L: torchvision's resnet101 with replace_stride_with_dilation=
  [False, True, True] (output stride 8) and four summed 3x3 classifiers at rates 6, 12, 18, 24, as
  `benchmarks/model.py` (where its logits are checked equal to ours).
- DeepLab-v3+ Xception-65: timm's `xception65` (the aligned Xception-65 of the TF release, the
  same 37.9M-parameter backbone as ours) at output stride 16, with a v3+ head written to mirror
  `models/heads/decoder.py`: separable ASPP (1x1, three 3x3 atrous separable at 6/12/18, image
  pooling), 1x1 projection + dropout 0.1, decoder (48-channel stride-4 projection, two separable
  3x3 convs of 256) and a 1x1 classifier; BatchNorm trained, as ours by default.
"""

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin, cout, kernel=1, rate=1, groups=1):
    return [nn.Conv2d(cin, cout, kernel, padding=rate * (kernel - 1) // 2, dilation=rate,
                      groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def separable(cin, cout, rate=1):
    """Depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU (the ASPP/decoder placement)."""
    return nn.Sequential(*conv_bn_relu(cin, cin, 3, rate, groups=cin), *conv_bn_relu(cin, cout))


class DeepLabV2(nn.Module):
    def __init__(self, num_classes=21, layers=(3, 4, 23, 3), rates=(6, 12, 18, 24)):
        super().__init__()
        from torchvision.models.resnet import Bottleneck, ResNet

        self.backbone = ResNet(Bottleneck, list(layers),
                               replace_stride_with_dilation=[False, True, True])
        self.aspp = nn.ModuleList(nn.Conv2d(2048, num_classes, 3, padding=r, dilation=r)
                                  for r in rates)
        self.frozen_bn = True

    def forward(self, x):
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        return sum(conv(x) for conv in self.aspp)


class DeepLabV3PlusXception(nn.Module):
    def __init__(self, num_classes=21, backbone="xception65", rates=(6, 12, 18), features=256):
        super().__init__()
        import timm

        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True,
                                          output_stride=16, out_indices=(1, 4))
        low_channels, channels = self.backbone.feature_info.channels()
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(channels, features))
        self.aspp0 = nn.Sequential(*conv_bn_relu(channels, features))
        self.branches = nn.ModuleList(separable(channels, features, r) for r in rates)
        self.project = nn.Sequential(*conv_bn_relu((len(rates) + 2) * features, features),
                                     nn.Dropout(0.1))
        self.low = nn.Sequential(*conv_bn_relu(low_channels, 48))
        self.decoder = nn.Sequential(separable(features + 48, features),
                                     separable(features, features))
        self.classifier = nn.Conv2d(features, num_classes, 1)
        self.frozen_bn = False

    def forward(self, x):
        low, x = self.backbone(x)
        pooled = self.pooling(x).expand(-1, -1, x.shape[2], x.shape[3])
        x = torch.cat([pooled, self.aspp0(x)] + [branch(x) for branch in self.branches], 1)
        x = F.interpolate(self.project(x), size=low.shape[2:], mode="bilinear",
                          align_corners=True)
        x = self.decoder(torch.cat([x, self.low(low)], 1))
        return self.classifier(x)


def set_train_mode(model):
    """Training mode, BatchNorm kept in eval mode where the twin freezes it (v2)."""
    model.train()
    if model.frozen_bn:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
