"""KD losses as small registered classes, each citing its paper.

Every loss reads what it needs from one `KDBatch` (student and teacher logits, labels where they
exist, hooked features) and returns a scalar; the pipeline sums them with weights given in YAML
(`compress.distill.objective`). Logit losses run on every input, the transfer set included;
`ce` runs only where a label exists (label -1 means "no label").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

LOSSES: dict[str, type["KDLoss"]] = {}
NO_LABEL = -1


@dataclass
class KDBatch:
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor | None
    labels: torch.Tensor  # int64, NO_LABEL where the input has none
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    soft_labels: torch.Tensor | None = None  # MixUp/CutMix class probabilities; `labels` is their argmax
    # Transformer losses: hidden states and Q/K/V (compress.distill.transformer_taps.TransformerInternals).
    student_internals: Any = None
    teacher_internals: Any = None
    student_dist_logits: torch.Tensor | None = None  # DeiT: the student's distillation-token head

    @property
    def labeled(self) -> torch.Tensor:
        return self.labels != NO_LABEL

    def targets(self) -> torch.Tensor:
        """The label where there is one, else the teacher's prediction (for losses that need a class)."""
        guess = self.teacher_logits.argmax(1)
        return torch.where(self.labeled, self.labels, guess)


class KDLoss(nn.Module):
    loss_name: str = ""
    uses_teacher: bool = True
    # Feature losses name the student and teacher modules whose outputs they compare.
    student_path: str | None = None
    teacher_path: str | None = None

    def setup(self, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        """Feature losses build their connectors here from the probed feature shapes."""

    def forward(self, batch: KDBatch) -> torch.Tensor:
        raise NotImplementedError


def register_loss(name: str) -> Callable[[type[KDLoss]], type[KDLoss]]:
    def wrap(cls: type[KDLoss]) -> type[KDLoss]:
        LOSSES[name] = cls
        cls.loss_name = name
        return cls

    return wrap


def kl_at_temperature(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


@register_loss("ce")
class CrossEntropy(KDLoss):
    """Cross-entropy on the inputs that have a label (optionally label-smoothed)."""

    uses_teacher = False

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, batch: KDBatch) -> torch.Tensor:
        if batch.soft_labels is not None:
            return F.cross_entropy(batch.student_logits.float(), batch.soft_labels,
                                   label_smoothing=self.label_smoothing)
        if not bool(batch.labeled.any()):
            return batch.student_logits.sum() * 0.0
        return F.cross_entropy(batch.student_logits.float(), batch.labels, ignore_index=NO_LABEL,
                               label_smoothing=self.label_smoothing)


@register_loss("kd")
class HintonKD(KDLoss):
    """KL(teacher || student) of temperature-softened distributions, scaled by T^2.

    Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network", 2015. arXiv:1503.02531
    """

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, batch: KDBatch) -> torch.Tensor:
        return kl_at_temperature(batch.student_logits, batch.teacher_logits, self.temperature)


@register_loss("lskd")
class LogitStandardKD(KDLoss):
    """Hinton KD on z-scored logits, so the student matches the teacher's logit relations, not their scale.

    Sun, Ren, Li, Wang, Cao. "Logit Standardization in Knowledge Distillation", CVPR 2024. arXiv:2403.01427
    """

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        self.temperature = temperature

    @staticmethod
    def standardize(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return (logits - logits.mean(1, keepdim=True)) / (logits.std(1, keepdim=True) + 1e-7)

    def forward(self, batch: KDBatch) -> torch.Tensor:
        return kl_at_temperature(self.standardize(batch.student_logits), self.standardize(batch.teacher_logits),
                                 self.temperature)


@register_loss("dkd")
class DecoupledKD(KDLoss):
    """KD split into target-class (TCKD) and non-target-class (NCKD) terms, weighed alpha and beta.

    Zhao, Cui, Song, Qiu, Liang. "Decoupled Knowledge Distillation", CVPR 2022. arXiv:2203.08679
    The target class is the label where one exists, else the teacher's prediction (transfer inputs).
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 1.0, beta: float = 8.0):
        super().__init__()
        self.temperature, self.alpha, self.beta = temperature, alpha, beta

    def forward(self, batch: KDBatch) -> torch.Tensor:
        t = self.temperature
        s, te = batch.student_logits.float(), batch.teacher_logits.float()
        target = F.one_hot(batch.targets(), s.shape[1]).bool()
        p_s, p_t = F.softmax(s / t, dim=1), F.softmax(te / t, dim=1)

        def binary(p: torch.Tensor) -> torch.Tensor:
            gt = (p * target).sum(1, keepdim=True)
            return torch.cat([gt, 1 - gt], dim=1).clamp_min(1e-8)

        b_s, b_t = binary(p_s), binary(p_t)
        tckd = (b_t * (b_t.log() - b_s.log())).sum(1).mean() * t * t
        masked = -1000.0 * target  # drop the target class from both distributions
        log_q_s = F.log_softmax(s / t + masked, dim=1)
        q_t = F.softmax(te / t + masked, dim=1)
        nckd = (q_t * (q_t.clamp_min(1e-12).log() - log_q_s)).sum(1).mean() * t * t
        return self.alpha * tckd + self.beta * nckd


@register_loss("dist")
class DIST(KDLoss):
    """Pearson correlation between student and teacher predictions: across classes (inter) and batch (intra).

    Huang, You, Wang, Qian, Xu. "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022. arXiv:2205.10536
    """

    def __init__(self, temperature: float = 1.0, beta: float = 1.0, gamma: float = 1.0):
        super().__init__()
        self.temperature, self.beta, self.gamma = temperature, beta, gamma

    @staticmethod
    def pearson_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = a - a.mean(1, keepdim=True)
        b = b - b.mean(1, keepdim=True)
        return 1 - (F.cosine_similarity(a, b, dim=1, eps=1e-8)).mean()

    def forward(self, batch: KDBatch) -> torch.Tensor:
        t = self.temperature
        p_s = F.softmax(batch.student_logits.float() / t, dim=1)
        p_t = F.softmax(batch.teacher_logits.float() / t, dim=1)
        inter = self.pearson_distance(p_s, p_t)
        intra = self.pearson_distance(p_s.T, p_t.T)
        return t * t * (self.beta * inter + self.gamma * intra)


@register_loss("mse")
class LogitMSE(KDLoss):
    """Mean squared error between logits.

    Ba, Caruana. "Do Deep Nets Really Need to be Deep?", NeurIPS 2014. arXiv:1312.6184
    """

    def forward(self, batch: KDBatch) -> torch.Tensor:
        return F.mse_loss(batch.student_logits.float(), batch.teacher_logits.float())


class FeatureLoss(KDLoss):
    """Base of the losses on intermediate features taken by module path (`student:`, `teacher:`)."""

    def __init__(self, student: str, teacher: str):
        super().__init__()
        self.student_path, self.teacher_path = student, teacher

    @staticmethod
    def match_spatial(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Average-pool the larger map to the smaller one's size (sizes checked in `check_shapes`)."""
        if s.dim() == 4 and s.shape[2:] != t.shape[2:]:
            if s.shape[2] > t.shape[2]:
                s = F.adaptive_avg_pool2d(s, t.shape[2:])
            else:
                t = F.adaptive_avg_pool2d(t, s.shape[2:])
        return s, t

    @staticmethod
    def check_shapes(student_shape: torch.Size, teacher_shape: torch.Size) -> str | None:
        """None when the two features can be compared, else why not."""
        if len(student_shape) != len(teacher_shape) or len(student_shape) not in (2, 4):
            return (f"student feature {tuple(student_shape)} and teacher feature {tuple(teacher_shape)} "
                    "must both be (N, C) or both (N, C, H, W)")
        if len(student_shape) == 4:
            (sh, sw), (th, tw) = student_shape[2:], teacher_shape[2:]
            big, small = ((sh, sw), (th, tw)) if sh >= th else ((th, tw), (sh, sw))
            if big[0] % small[0] or big[1] % small[1]:
                return (f"spatial sizes {sh}x{sw} (student) and {th}x{tw} (teacher) differ and neither "
                        "is a multiple of the other")
        return None


@register_loss("fitnet")
class FitNet(FeatureLoss):
    """Hint loss: MSE between a teacher feature and a student feature through a learned 1x1 connector.

    Romero, Ballas, Kahou, Chassang, Gatta, Bengio. "FitNets: Hints for Thin Deep Nets", ICLR 2015. arXiv:1412.6550
    """

    def setup(self, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        c_s, c_t = student_shape[1], teacher_shape[1]
        self.connector = nn.Conv2d(c_s, c_t, 1, bias=False) if len(student_shape) == 4 else nn.Linear(c_s, c_t, bias=False)

    def forward(self, batch: KDBatch) -> torch.Tensor:
        s, t = self.match_spatial(batch.student_features[self.student_path].float(),
                                  batch.teacher_features[self.teacher_path].float())
        return F.mse_loss(self.connector(s), t)


@register_loss("at")
class AttentionTransfer(FeatureLoss):
    """Match normalised spatial attention maps (channel mean of |feature|^p); channels may differ.

    Zagoruyko, Komodakis. "Paying More Attention to Attention", ICLR 2017. arXiv:1612.03928
    """

    def __init__(self, student: str, teacher: str, p: float = 2.0):
        super().__init__(student, teacher)
        self.p = p

    @staticmethod
    def check_shapes(student_shape: torch.Size, teacher_shape: torch.Size) -> str | None:
        if len(student_shape) != 4 or len(teacher_shape) != 4:
            return f"attention transfer needs (N, C, H, W) features, got {tuple(student_shape)} and {tuple(teacher_shape)}"
        return FeatureLoss.check_shapes(student_shape, teacher_shape)

    def attention(self, feature: torch.Tensor) -> torch.Tensor:
        return F.normalize(feature.float().abs().pow(self.p).mean(1).flatten(1), dim=1)

    def forward(self, batch: KDBatch) -> torch.Tensor:
        s, t = self.match_spatial(batch.student_features[self.student_path],
                                  batch.teacher_features[self.teacher_path])
        return (self.attention(s) - self.attention(t)).pow(2).mean()
