"""Built-in models: any in_channels, num_classes and input size.

`resnet8x4` / `resnet32x4` follow the CIFAR ResNets of the KD literature (CRD, Tian et al. 2020):
three stages after a 3x3 stem, widths 32-64-128-256 for the "x4" variants, basic blocks.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, input_size: int, hidden: list[int] | None = None,
                 dropout: float = 0.0):
        super().__init__()
        hidden = [128] if hidden is None else list(hidden)
        dims = [in_channels * input_size * input_size, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for d_in, d_out in zip(dims, dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class SmallCNN(nn.Module):
    """conv-bn-relu blocks, a 2x2 max-pool after every block but the last, global average pool."""

    def __init__(self, in_channels: int, num_classes: int, input_size: int, channels: list[int] | None = None):
        super().__init__()
        channels = [16, 32, 64] if channels is None else list(channels)
        blocks: list[nn.Module] = []
        size, c_in = input_size, in_channels
        for i, c_out in enumerate(channels):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if i < len(channels) - 1 and size >= 4:
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(x)), 1))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, widths: list[int], in_channels: int, num_classes: int, input_size: int = 32):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("depth must be 6n+2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, c_in = [], widths[0]
        for i, c_out in enumerate(widths[1:]):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(c_in, c_out, stride)] + [BasicBlock(c_out, c_out, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _resnet(depth: int, widths: list[int]) -> Callable[..., nn.Module]:
    # No **kwargs: the signature is what `compress validate` reads to tell a user which kwargs exist.
    def build(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
        return CifarResNet(depth, widths, in_channels, num_classes, input_size)

    build.__doc__ = f"CIFAR ResNet-{depth}, widths {widths}"
    return build


ZOO: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "resnet8": _resnet(8, [16, 16, 32, 64]),
    "resnet20": _resnet(20, [16, 16, 32, 64]),
    "resnet32": _resnet(32, [16, 16, 32, 64]),
    "resnet8x4": _resnet(8, [32, 64, 128, 256]),
    "resnet32x4": _resnet(32, [32, 64, 128, 256]),
}
