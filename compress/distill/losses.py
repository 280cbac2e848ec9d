"""KD losses as small registered classes, each citing its paper.

A loss takes the student's and teacher's logits (and labels when it needs them) and returns a
scalar. The pipeline combines them with weights given in YAML.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

LOSSES: dict[str, type[nn.Module]] = {}


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        LOSSES[name] = cls
        cls.loss_name = name
        return cls

    return wrap


@register_loss("kd")
class HintonKD(nn.Module):
    """KL(teacher || student) of temperature-softened distributions, scaled by T^2.

    Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network", 2015. arXiv:1503.02531
    """

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels=None) -> torch.Tensor:
        t = self.temperature
        log_p_student = F.log_softmax(student_logits / t, dim=1)
        log_p_teacher = F.log_softmax(teacher_logits / t, dim=1)
        return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


@register_loss("mse")
class LogitMSE(nn.Module):
    """Mean squared error between logits.

    Ba, Caruana. "Do Deep Nets Really Need to be Deep?", NeurIPS 2014. arXiv:1312.6184
    """

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels=None) -> torch.Tensor:
        return F.mse_loss(student_logits, teacher_logits)
