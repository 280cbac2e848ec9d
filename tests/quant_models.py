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
