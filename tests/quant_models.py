"""Student factories for the quantization tests (imported as `tests.quant_models:NAME`)."""

from __future__ import annotations

import torch
from torch import nn


class ScaledPixels(nn.Module):
    """Trainable, but with no conv, linear or matmul: nothing NNCF can quantize."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_classes))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)[:, :self.num_classes] * self.scale


class OutlierCNN(nn.Module):
    """A narrow CNN with an outlier-heavy first block: beside its channels it passes on their mean times
    `outlier_gain` (as an unnormalised feature of a real network can be), which training cannot shrink
    relative to the others. Per-tensor int8 of that activation crushes the small channels, so plain PTQ
    loses points that one layer kept in float (the conv reading it) wins back."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int, channels: tuple[int, int] = (8, 16),
                 outlier_gain: float = 300.0, extra_convs: int = 0):
        super().__init__()
        self.outlier_gain = outlier_gain
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.conv2 = nn.Conv2d(channels[0] + 1, channels[1], 3, padding=1, stride=2)
        self.conv3 = nn.Conv2d(channels[1], channels[1], 3, padding=1)
        self.extra = nn.ModuleList(nn.Conv2d(channels[1], channels[1], 3, padding=1) for _ in range(extra_convs))
        self.head = nn.Linear(channels[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.cat([x, self.outlier_gain * x.mean(1, keepdim=True)], 1)
        x = torch.relu(self.conv3(torch.relu(self.conv2(x))))
        for conv in self.extra:
            x = torch.relu(conv(x))
        return self.head(x.mean((2, 3)))
