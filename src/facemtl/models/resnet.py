"""ResNet18 (He et al.) with torchvision-compatible state-dict keys (conv1, bn1,
layer1.0.conv1, ..., layer2.0.downsample.0/1, fc), split into the 4 blocks at which Deep
Collaboration connects columns (Fig. 2): stem + layer1, layer2, layer3, layer4.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from facemtl.models.backbones import Backbone


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(Backbone):
    """ResNet18; ``width`` is the stem / layer1 channel count (64 standard), doubled per stage."""

    def __init__(self, width: int = 64, include_top: bool = True, num_classes: int = 1000):
        super().__init__()
        w = (width, 2 * width, 4 * width, 8 * width)
        self.block_channels = w
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for i, cout in enumerate(w):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.fc = nn.Linear(w[-1], num_classes) if include_top else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if index == 0:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return getattr(self, f"layer{index + 1}")(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        if self.fc is None:
            return x
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
