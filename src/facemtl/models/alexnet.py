"""AlexNet with torchvision-compatible state-dict keys (features.0/3/6/8/10,
classifier.1/4/6), split into the 3 blocks that end with a max pooling: Deep Collaboration
inserts a collaborative block after each max pooling (section 4.2).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from facemtl.models.backbones import Backbone

# features indices where each block ends (exclusive): after each MaxPool2d
_BLOCK_ENDS = (3, 6, 13)


class AlexNet(Backbone):
    """AlexNet; ``width`` is the first conv's channels (64 standard); the others scale with it
    (192, 384, 256, 256 at width 64)."""

    def __init__(self, width: int = 64, include_top: bool = True, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        c1, c2, c3, c4 = width, 3 * width, 6 * width, 4 * width
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 11, 4, 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )
        self.block_channels = (c1, c2, c4)
        self.classifier = None
        if include_top:
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(c4 * 36, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Linear(4096, num_classes),
            )

    def forward_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        start = 0 if index == 0 else _BLOCK_ENDS[index - 1]
        for layer in self.features[start : _BLOCK_ENDS[index]]:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if self.classifier is None:
            return x
        return self.classifier(torch.flatten(self.avgpool(x), 1))
