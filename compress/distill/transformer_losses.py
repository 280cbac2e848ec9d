"""Transformer KD losses on hidden states and attention, each a small registered class citing its paper.

They read `KDBatch.student_internals` / `teacher_internals` (`TransformerInternals` from
`compress.distill.transformer_taps`). Attention is rebuilt from the tapped Q and K, so the models may
run sdpa. Padding (attention_mask 0) never counts: token averages skip padded tokens, attention
distributions put no mass on padded keys (-inf before the softmax), and rows of padded queries are
dropped. Layers are numbered as in the papers: 0 = embeddings, 1..N = the layers' outputs.
Options come from YAML, where a `layer_map`'s keys may arrive as ints or strings: both are accepted.
`check_transformer_loss` checks the options against `describe_transformer` of both models before any
model is built, so a bad layer or head count is one line, not a shape error mid-training.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compress.distill.losses import LOSSES, KDBatch, KDLoss, register_loss
from compress.distill.transformer_taps import TransformerInternals


def layer_number(value: Any, what: str) -> int:
    """An int from YAML, which may give `2` or `"2"`; anything else (a bool, 2.5, "two") is refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{what}: must be a layer number, got {value!r}")


def parse_layer_map(layer_map: Any) -> dict[int, int] | None:
    if layer_map is None:
        return None
    if not isinstance(layer_map, dict) or not layer_map:
        raise ValueError(f"layer_map: give {{student_layer: teacher_layer, ...}}, got {layer_map!r}")
    return {layer_number(s, "layer_map"): layer_number(t, "layer_map") for s, t in layer_map.items()}


def uniform_map(student_layers: int, teacher_layers: int, first: int) -> dict[int, int]:
    """TinyBERT's g(m) = m * N / M: student layer m learns from teacher layer m * N / M."""
    return {m: max(first, m * teacher_layers // student_layers) for m in range(first, student_layers + 1)}


def map_out_of_range(pairs: dict[int, int], student_layers: int, teacher_layers: int, first: int) -> str | None:
    for role, layers, index in (("student", student_layers, 0), ("teacher", teacher_layers, 1)):
        for pair in pairs.items():
            if not first <= pair[index] <= layers:
                return (f"layer_map: {role} layer {pair[index]} is out of range {first}..{layers} "
                        f"(the {role} has {layers} layers)")
    return None


def chosen_layer(value: Any, what: str) -> int | None:
    return None if value is None else layer_number(value, what)


def layer_out_of_range(layer: int | None, layers: int, what: str) -> str | None:
    if layer is not None and not 1 <= layer <= layers:
        return f"{what}: layer {layer} is out of range 1..{layers} (the teacher has {layers} layers)"
    return None


def heads_differ(student: int, teacher: int) -> str | None:
    if student != teacher:
        return f"needs equal head counts: the student has {student} heads, the teacher {teacher}"
    return None


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads * d) -> (B, heads, L, d): the layout every projection here uses (head h = slice h)."""
    b, length, width = x.shape
    return x.float().reshape(b, length, heads, width // heads).transpose(1, 2)


def scaled_products(a: torch.Tensor, b: torch.Tensor, heads: int) -> torch.Tensor:
    """a_h b_h^T / sqrt(d_head) per head: (B, heads, L, L); with a = Q, b = K the attention scores."""
    a_h, b_h = split_heads(a, heads), split_heads(b, heads)
    return a_h @ b_h.transpose(-1, -2) / math.sqrt(a_h.shape[-1])


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, L) values over the real tokens only."""
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp_min(1)


def relation_kl(teacher_scores: torch.Tensor, student_scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of row-wise softmax over real keys, averaged over heads and real query rows."""
    keys = mask | ~mask.any(1, keepdim=True)  # a sequence without any real token keeps its keys: no NaN rows
    padded_keys = ~keys[:, None, None, :]
    log_t = F.log_softmax(teacher_scores.masked_fill(padded_keys, float("-inf")), dim=-1)
    log_s = F.log_softmax(student_scores.masked_fill(padded_keys, float("-inf")), dim=-1)
    terms = torch.where(padded_keys, 0.0, log_t.exp() * (log_t - log_s)).sum(-1)  # (B, heads, L)
    rows = mask[:, None, :].expand_as(terms)
    return torch.where(rows, terms, 0.0).sum() / rows.sum().clamp_min(1)


class TransformerLoss(KDLoss):
    """Base of the losses that read `TransformerInternals` of both models."""

    uses_internals = True

    @classmethod
    def check_options(cls, options: dict, student: dict, teacher: dict) -> str | None:
        """Why these options cannot work for these two models (describe_transformer dicts), or None."""
        return None

    @staticmethod
    def internals(batch: KDBatch) -> tuple[TransformerInternals, TransformerInternals, torch.Tensor]:
        """Student and teacher internals and the (B, L) real-token mask they share."""
        s, t = batch.student_internals, batch.teacher_internals
        if s is None or t is None:
            raise RuntimeError("this loss needs the hidden states and Q/K/V of both models (TransformerTaps)")
        if s.hidden[0].shape[:2] != t.hidden[0].shape[:2]:
            raise ValueError(f"student and teacher see different token grids: {tuple(s.hidden[0].shape[:2])} "
                             f"and {tuple(t.hidden[0].shape[:2])} (batch, length)")
        return s, t, (s if s.attention_mask is not None else t).token_mask()


class ProjectedHiddenLoss(TransformerLoss):
    """Hidden-state losses: a learned Linear maps student width to teacher width when they differ.

    The Linear is built by `setup_widths` (or `setup` from hidden-state shapes) before training, like
    FitNet's connector, so the optimizer that takes this module's parameters trains it.
    """

    def __init__(self):
        super().__init__()
        self.projection = None

    def setup_widths(self, student_hidden: int, teacher_hidden: int) -> None:
        differ = student_hidden != teacher_hidden
        self.projection = nn.Linear(student_hidden, teacher_hidden, bias=False) if differ else None

    def setup(self, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        self.setup_widths(int(student_shape[-1]), int(teacher_shape[-1]))

    def project(self, hidden: torch.Tensor, teacher_width: int) -> torch.Tensor:
        hidden = hidden.float()
        if self.projection is not None:
            return self.projection(hidden)
        if hidden.shape[-1] != teacher_width:
            raise RuntimeError(f"student width {hidden.shape[-1]} differs from teacher width {teacher_width}: "
                               "call setup_widths(student, teacher) before training so the projection is trained")
        return hidden


@register_loss("hidden_cosine")
class HiddenCosine(ProjectedHiddenLoss):
    """1 - cos(student, teacher) of the last hidden states, averaged over real tokens.

    Sanh, Debut, Chaumond, Wolf. "DistilBERT, a distilled version of BERT: smaller, faster, cheaper and
    lighter", 2019. arXiv:1910.01108
    """

    def forward(self, batch: KDBatch) -> torch.Tensor:
        s, t, mask = self.internals(batch)
        teacher = t.hidden[-1].float()
        cos = F.cosine_similarity(self.project(s.hidden[-1], teacher.shape[-1]), teacher, dim=-1, eps=1e-8)
        return masked_token_mean(1 - cos, mask)


class MappedLayers:
    """A `layer_map` option: given pairs, or TinyBERT's uniform map when none is given."""

    def __init__(self, layer_map: Any, first: int):
        self.pairs, self.first = parse_layer_map(layer_map), first

    def resolve(self, student_layers: int, teacher_layers: int) -> dict[int, int]:
        pairs = self.pairs if self.pairs is not None else uniform_map(student_layers, teacher_layers, self.first)
        problem = map_out_of_range(pairs, student_layers, teacher_layers, self.first)
        if problem:
            raise ValueError(problem)
        return pairs

    def check(self, student: dict, teacher: dict) -> str | None:
        pairs = self.pairs if self.pairs is not None else uniform_map(student["layers"], teacher["layers"], self.first)
        return map_out_of_range(pairs, student["layers"], teacher["layers"], self.first)


@register_loss("tinybert_hidden")
class TinyBertHidden(ProjectedHiddenLoss):
    """MSE between W h_student and h_teacher per mapped layer (0 = embeddings), averaged over real tokens
    and mapped layers; one W for every layer (as TinyBERT's code does), only when widths differ.

    Jiao, Yin, Shang, Jiang, Chen, Li, Wang, Liu. "TinyBERT: Distilling BERT for Natural Language
    Understanding", 2020. arXiv:1909.10351
    """

    def __init__(self, layer_map: dict | None = None):
        super().__init__()
        self.layers = MappedLayers(layer_map, first=0)

    @classmethod
    def check_options(cls, options: dict, student: dict, teacher: dict) -> str | None:
        return MappedLayers(options.get("layer_map"), first=0).check(student, teacher)

    def forward(self, batch: KDBatch) -> torch.Tensor:
        s, t, mask = self.internals(batch)
        pairs = self.layers.resolve(s.layers, t.layers)
        total = 0.0
        for s_layer, t_layer in pairs.items():
            teacher = t.hidden[t_layer].float()
            error = (self.project(s.hidden[s_layer], teacher.shape[-1]) - teacher).pow(2).mean(-1)
            total = total + masked_token_mean(error, mask)
        return total / len(pairs)


@register_loss("tinybert_attention")
class TinyBertAttention(TransformerLoss):
    """MSE between student and teacher attention scores Q K^T / sqrt(d_head) (before the softmax) per
    mapped layer, over real query/key pairs, averaged over heads and mapped layers; equal head counts.

    Jiao, Yin, Shang, Jiang, Chen, Li, Wang, Liu. "TinyBERT: Distilling BERT for Natural Language
    Understanding", 2020. arXiv:1909.10351
    """

    def __init__(self, layer_map: dict | None = None):
        super().__init__()
        self.layers = MappedLayers(layer_map, first=1)

    @classmethod
    def check_options(cls, options: dict, student: dict, teacher: dict) -> str | None:
        return (heads_differ(student["heads"], teacher["heads"])
                or MappedLayers(options.get("layer_map"), first=1).check(student, teacher))

    def forward(self, batch: KDBatch) -> torch.Tensor:
        s, t, mask = self.internals(batch)
        problem = heads_differ(s.heads, t.heads)
        if problem:
            raise ValueError(f"tinybert_attention {problem}")
        pairs = self.layers.resolve(s.layers, t.layers)
        real_pairs = (mask[:, :, None] & mask[:, None, :])[:, None].expand(-1, s.heads, -1, -1)
        total = 0.0
        for s_layer, t_layer in pairs.items():
            scores_s = scaled_products(s.queries[s_layer - 1], s.keys[s_layer - 1], s.heads)
            scores_t = scaled_products(t.queries[t_layer - 1], t.keys[t_layer - 1], t.heads)
            squared = torch.where(real_pairs, (scores_s - scores_t).pow(2), 0.0)
            total = total + squared.sum() / real_pairs.sum().clamp_min(1)
        return total / len(pairs)


@register_loss("minilm")
class MiniLM(TransformerLoss):
    """Last layer's self-attention distributions and value relations softmax(V V^T / sqrt(d_head)),
    KL(teacher || student) per head; equal head counts; `teacher_layer` picks the teacher's (default last).

    Wang, Wei, Dong, Bao, Yang, Zhou. "MiniLM: Deep Self-Attention Distillation for Task-Agnostic
    Compression of Pre-Trained Transformers", 2020. arXiv:2002.10957
    """

    def __init__(self, teacher_layer: int | None = None):
        super().__init__()
        self.teacher_layer = chosen_layer(teacher_layer, "teacher_layer")

    @classmethod
    def check_options(cls, options: dict, student: dict, teacher: dict) -> str | None:
        layer = chosen_layer(options.get("teacher_layer"), "teacher_layer")
        return (heads_differ(student["heads"], teacher["heads"])
                or layer_out_of_range(layer, teacher["layers"], "teacher_layer"))

    def forward(self, batch: KDBatch) -> torch.Tensor:
        s, t, mask = self.internals(batch)
        problem = heads_differ(s.heads, t.heads) or layer_out_of_range(self.teacher_layer, t.layers, "teacher_layer")
        if problem:
            raise ValueError(f"minilm {problem}")
        ti = (self.teacher_layer or t.layers) - 1
        attention = relation_kl(scaled_products(t.queries[ti], t.keys[ti], t.heads),
                                scaled_products(s.queries[-1], s.keys[-1], s.heads), mask)
        values = relation_kl(scaled_products(t.values[ti], t.values[ti], t.heads),
                             scaled_products(s.values[-1], s.values[-1], s.heads), mask)
        return attention + values


@register_loss("minilmv2")
class MiniLMv2(TransformerLoss):
    """Q-Q, K-K and V-V self-attention relations of the student's last layer and one teacher layer,
    with the projections split into `relation_heads` (default the student's head count), so the two
    head counts may differ: KL(teacher || student) per relation head, summed over the three relations.

    Wang, Bao, Huang, Dong, Wei. "MiniLMv2: Multi-Head Self-Attention Relation Distillation for
    Compressing Pretrained Transformers", 2021. arXiv:2012.15828
    """

    def __init__(self, relation_heads: int | None = None, teacher_layer: int | None = None):
        super().__init__()
        self.relation_heads = self.positive(relation_heads)
        self.teacher_layer = chosen_layer(teacher_layer, "teacher_layer")

    @staticmethod
    def positive(relation_heads: Any) -> int | None:
        if relation_heads is None:
            return None
        if isinstance(relation_heads, bool) or not isinstance(relation_heads, int) or relation_heads < 1:
            raise ValueError(f"relation_heads: must be a whole number >= 1, got {relation_heads!r}")
        return relation_heads

    @staticmethod
    def indivisible(relation_heads: int, student_width: int, teacher_width: int) -> str | None:
        for role, width in (("student", student_width), ("teacher", teacher_width)):
            if width % relation_heads:
                return f"relation_heads: {relation_heads} does not divide the {role}'s attention width {width}"
        return None

    @classmethod
    def check_options(cls, options: dict, student: dict, teacher: dict) -> str | None:
        heads = cls.positive(options.get("relation_heads")) or student["heads"]
        layer = chosen_layer(options.get("teacher_layer"), "teacher_layer")
        return (cls.indivisible(heads, student.get("attention_width", student["hidden"]),
                                teacher.get("attention_width", teacher["hidden"]))
                or layer_out_of_range(layer, teacher["layers"], "teacher_layer"))

    def forward(self, batch: KDBatch) -> torch.Tensor:
        s, t, mask = self.internals(batch)
        heads = self.relation_heads or s.heads
        problem = (layer_out_of_range(self.teacher_layer, t.layers, "teacher_layer")
                   or self.indivisible(heads, s.queries[-1].shape[-1], t.queries[-1].shape[-1]))
        if problem:
            raise ValueError(f"minilmv2 {problem}")
        ti = (self.teacher_layer or t.layers) - 1
        total = 0.0
        for student_part, teacher_part in ((s.queries, t.queries), (s.keys, t.keys), (s.values, t.values)):
            total = total + relation_kl(scaled_products(teacher_part[ti], teacher_part[ti], heads),
                                        scaled_products(student_part[-1], student_part[-1], heads), mask)
        return total


@register_loss("deit_hard")
class DeiTHardDistillation(KDLoss):
    """Cross-entropy of the student's distillation-token logits against the teacher's hard prediction
    (pair it with `ce` on the class token for DeiT's 1/2 CE + 1/2 hard-KD recipe).

    Touvron, Cord, Douze, Massa, Sablayrolles, Jegou. "Training data-efficient image transformers &
    distillation through attention", 2021. arXiv:2012.12877
    """

    uses_distillation_token = True

    def __init__(self):  # an explicit signature: option checks read the constructor's parameters
        super().__init__()

    @classmethod
    def check_options(cls, options: dict, student: dict, teacher: dict) -> str | None:
        if not student.get("distillation_token"):
            return ("deit_hard needs a student with a distillation token (e.g. timm deit_*_distilled_*); "
                    f"this {student.get('family', 'student')} has none")
        return None

    def forward(self, batch: KDBatch) -> torch.Tensor:
        if batch.student_dist_logits is None:
            raise RuntimeError("deit_hard needs the student's distillation-token logits (KDBatch.student_dist_logits)")
        return F.cross_entropy(batch.student_dist_logits.float(), batch.teacher_logits.argmax(1))


def check_transformer_loss(name: str, options: dict, student: dict, teacher: dict) -> str | None:
    """One line on why loss `name` with `options` cannot run between these models (describe_transformer
    dicts), or None; None also for a loss that is not one of the Transformer losses."""
    check = getattr(LOSSES.get(name), "check_options", None)
    if check is None:
        return None
    try:
        return check(dict(options), student, teacher)
    except ValueError as error:
        return str(error)
