"""Token-level distillation losses for causal language models (teacher LM -> smaller student LM).

Conventions shared by every loss here:

* `s` (student) and `t` (teacher) are logits of shape (batch, seq, vocab) with the same vocabulary
  (slice both to the shared tokenizer's vocabulary first when one model pads its embedding).
  Position i holds the prediction of token i + 1, as in Hugging Face causal LMs.
* `mask` (batch, seq), bool or float, says which positions count; padding, prompt tokens and the
  last position (which predicts nothing) are 0. `next_token_mask(labels)` builds it from Hugging
  Face-style labels. A float mask acts as per-token weights (non-zero entries count).
* The result is the token-weighted mean over counted tokens: sum(w * loss_token) / sum(w), i.e.
  sum over counted tokens / number of counted tokens for a 0/1 mask; 0 when nothing counts.
  Positions that do not count are dropped *before* any arithmetic, so whatever they hold (huge
  logits, inf) neither changes the value nor reaches the gradient (their gradient is exactly 0).
* Everything is computed in float32 (float64 stays float64) from `log_softmax`; log-probabilities
  are floored at `LOG_ZERO` so a -inf logit (a masked vocabulary slot) gives probability 0 and
  contributes 0 * finite = 0 instead of NaN.
* The teacher is detached: gradient flows to the student (and to hidden-state projections) only.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

LOG_ZERO = -1e30  # floor for log-probabilities: exp(LOG_ZERO) == 0 and LOG_ZERO - LOG_ZERO == 0, all finite


# ----------------------------------------------------------------------------------------------
# shared helpers


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_logits(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> None:
    if s.dim() != 3:
        raise ValueError(f"student logits must be (batch, seq, vocab), got shape {tuple(s.shape)}")
    if s.shape != t.shape:
        if s.shape[:-1] == t.shape[:-1]:
            raise ValueError(
                f"student vocab {s.shape[-1]} != teacher vocab {t.shape[-1]}: slice both logits to the "
                "shared tokenizer's vocabulary first"
            )
        raise ValueError(f"student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ in shape")
    _check_mask(s, mask)


def _check_mask(x: torch.Tensor, mask: torch.Tensor) -> None:
    if tuple(mask.shape) != tuple(x.shape[:-1]):
        raise ValueError(f"mask shape {tuple(mask.shape)} must be (batch, seq) = {tuple(x.shape[:-1])}")


def _counted(mask: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The weights of the counted positions and each tensor's rows at them ((n, ...) each)."""
    weights = mask.to(torch.float32) if mask.dtype != torch.float64 else mask
    keep = weights != 0
    return weights[keep], [x[keep] for x in tensors]


def _token_mean(per_token: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w * loss) / sum(w); 0 (still attached to the graph) when no token counts."""
    weights = weights.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp_min(torch.finfo(per_token.dtype).tiny)


def _log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    x = logits.to(_compute_dtype(logits))
    if temperature != 1.0:
        x = x / temperature
    return F.log_softmax(x, dim=-1).clamp_min(LOG_ZERO)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, both given as (floored) log-probabilities over the last dimension."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(weight_p * p + (1 - weight_p) * q), computed stably in log space (0 < weight_p < 1)."""
    return torch.logsumexp(
        torch.stack([log_p + math.log(weight_p), log_q + math.log1p(-weight_p)]), dim=0
    ).clamp_min(LOG_ZERO)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _prepare(s, t, mask, temperature=1.0):
    """Validated, counted, float32 log-probs of student and teacher (teacher detached) and weights."""
    _check_logits(s, t, mask)
    _check_temperature(temperature)
    weights, (s_rows, t_rows) = _counted(mask, s, t.detach())
    return _log_probs(s_rows, temperature), _log_probs(t_rows, temperature), weights


# ----------------------------------------------------------------------------------------------
# logit losses


def forward_kl(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Forward KL(p_T || q_S) per token, both softened by `temperature`, times T^2.

    Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531
    (the T^2 factor keeps gradient magnitudes comparable across temperatures); used token-wise for
    LMs by DistilBERT/DistilGPT2 (Sanh et al. 2019, arXiv:1910.01108). Mode-covering: the student
    is pushed to put mass wherever the teacher does.
    """
    log_q, log_p, w = _prepare(s, t, mask, temperature)
    return _token_mean(_kl_rows(log_p, log_q), w) * (temperature * temperature)


def reverse_kl(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Reverse KL(q_S || p_T) per token (mode-seeking).

    MiniLLM: Gu, Dong, Wei & Huang 2024, "MiniLLM: Knowledge Distillation of Large Language
    Models", arXiv:2306.08543 (which optimises it on student samples with policy gradients; here it
    is the token-level form on whatever sequences are given). `temperature` softens both
    distributions; unlike `forward_kl` there is no T^2 factor (MiniLLM uses T = 1).
    """
    log_q, log_p, w = _prepare(s, t, mask, temperature)
    return _token_mean(_kl_rows(log_q, log_p), w)


def generalized_jsd(
    s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, beta: float = 0.5, temperature: float = 1.0
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence of GKD, per token.

    Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from Self-Generated
    Mistakes" (GKD), arXiv:2306.13649. With m = beta * p_T + (1 - beta) * q_S:

        JSD_beta = beta * KL(p_T || m) + (1 - beta) * KL(q_S || m)

    Conventions follow TRL's `GKDTrainer.generalized_jsd_loss`: both logits are divided by
    `temperature` (no T^2 factor), and the end points are special-cased: beta = 0 returns the
    forward KL(p_T || q_S) and beta = 1 the reverse KL(q_S || p_T). Those are the limits of the
    *normalised* divergence (JSD_beta / beta -> KL(p_T || q_S) as beta -> 0 and
    JSD_beta / (1 - beta) -> KL(q_S || p_T) as beta -> 1); the unnormalised JSD_beta itself goes
    to 0 at both ends, so the loss is discontinuous there by design. beta = 0.5 is the symmetric
    Jensen-Shannon divergence (bounded by log 2).
    """
    _check_unit("beta", beta)
    log_q, log_p, w = _prepare(s, t, mask, temperature)
    if beta == 0.0:
        per_token = _kl_rows(log_p, log_q)
    elif beta == 1.0:
        per_token = _kl_rows(log_q, log_p)
    else:
        log_m = _log_mixture(log_p, log_q, beta)
        per_token = beta * _kl_rows(log_p, log_m) + (1.0 - beta) * _kl_rows(log_q, log_m)
    return _token_mean(per_token, w)


def skew_kl(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """Skew KL: KL(p_T || alpha * p_T + (1 - alpha) * q_S) per token.

    DistiLLM: Ko, Kim, Chen & Yun 2024, "DistiLLM: Towards Streamlined Distillation for Large
    Language Models", arXiv:2402.03898. alpha = 0 is the forward KL; alpha = 1 is identically 0.
    Mixing a little teacher into the target keeps the divergence (and its gradient) bounded where
    the student puts almost no mass.
    """
    _check_unit("alpha", alpha)
    log_q, log_p, w = _prepare(s, t, mask)
    log_mix = log_q if alpha == 0.0 else log_p if alpha == 1.0 else _log_mixture(log_p, log_q, alpha)
    return _token_mean(_kl_rows(log_p, log_mix), w)


def skew_reverse_kl(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """Skew reverse KL: KL(q_S || alpha * q_S + (1 - alpha) * p_T) per token.

    DistiLLM: Ko, Kim, Chen & Yun 2024, arXiv:2402.03898. alpha = 0 is the reverse KL; alpha = 1 is
    identically 0.
    """
    _check_unit("alpha", alpha)
    log_q, log_p, w = _prepare(s, t, mask)
    log_mix = log_p if alpha == 0.0 else log_q if alpha == 1.0 else _log_mixture(log_q, log_p, alpha)
    return _token_mean(_kl_rows(log_q, log_mix), w)


# ----------------------------------------------------------------------------------------------
# top-k teacher cache


def topk_teacher(
    t_logits: torch.Tensor, k: int, dtype: torch.dtype = torch.float16
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely tokens of the teacher at each position, for an on-disk teacher cache.

    Returns `(indices, logprobs)`, both (batch, seq, k), sorted by decreasing probability:
    `indices` int32 token ids and `logprobs` (`dtype`, float16 by default to halve the cache) the
    teacher's log-probabilities at temperature 1, from a log_softmax over the *full* vocabulary.
    They are not renormalised on storage, so the mass left outside the top k is
    1 - exp(logprobs).sum(-1); `forward_kl_topk` renormalises when it reads them. Storing logits
    from a cache instead of running the teacher is DistillKit's (arcee-ai) "offline" approach.
    """
    vocab = t_logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be in 1..{vocab} (the vocabulary size), got {k}")
    with torch.no_grad():
        logprobs = F.log_softmax(t_logits.detach().to(_compute_dtype(t_logits)), dim=-1)
        values, indices = logprobs.topk(k, dim=-1, sorted=True)
    return indices.to(torch.int32), values.to(dtype)


def forward_kl_topk(
    s: torch.Tensor, indices: torch.Tensor, logprobs: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Forward KL from a top-k teacher cache (see `topk_teacher`), times T^2.

    The teacher distribution is the cached top k renormalised to sum to 1 (the tail mass is
    dropped, not spread): p~_i = exp(lp_i / T) / sum_{j in top-k} exp(lp_j / T) for i in the top k,
    0 elsewhere; at T = 1 that is p_T restricted to the top k and divided by its mass. The student
    keeps its full-vocabulary distribution q_S = softmax(s / T), so the loss
    sum_{i in top-k} p~_i (log p~_i - log q_S,i) is a true KL (>= 0, zero only when the student
    puts exactly p~ on the top k and nothing elsewhere). With k = vocab it equals
    `forward_kl(s, t, mask, temperature)` for every T. Hinton et al. 2015 (arXiv:1503.02531) with
    the cached-logits form of DistillKit.
    """
    if s.dim() != 3:
        raise ValueError(f"student logits must be (batch, seq, vocab), got shape {tuple(s.shape)}")
    if indices.shape != logprobs.shape or tuple(indices.shape[:-1]) != tuple(s.shape[:-1]):
        raise ValueError(
            f"indices {tuple(indices.shape)} and logprobs {tuple(logprobs.shape)} must both be "
            f"(batch, seq, k) with (batch, seq) = {tuple(s.shape[:-1])}"
        )
    _check_mask(s, mask)
    _check_temperature(temperature)
    weights, (s_rows, idx_rows, lp_rows) = _counted(mask, s, indices, logprobs.detach())
    log_q = _log_probs(s_rows, temperature).gather(-1, idx_rows.long())
    teacher = lp_rows.to(log_q.dtype).clamp_min(LOG_ZERO)
    log_p = _log_probs(teacher, temperature)  # renormalised over the top k
    return _token_mean(_kl_rows(log_p, log_q), weights) * (temperature * temperature)


# ----------------------------------------------------------------------------------------------
# hidden states


def check_layer_map(
    layer_map: Sequence[tuple[int, int]], student_layers: int, teacher_layers: int
) -> str | None:
    """A message naming the first bad (student, teacher) pair of `layer_map`, or None when all fit.

    Indices follow Hugging Face `output_hidden_states`: a model with L transformer layers
    (`config.num_hidden_layers`) returns L + 1 hidden states, index 0 the embeddings and index i
    the output of layer i, so the valid indices are 0..L. Pairs are numbered from 0 (pair 2 is
    `layer_map[2]`).
    """
    for n, pair in enumerate(layer_map):
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
        ):
            return f"pair {n} {pair!r}: expected (student layer, teacher layer), two integers"
        i, j = pair
        for role, index, layers in (("student", i, student_layers), ("teacher", j, teacher_layers)):
            if not 0 <= index <= layers:
                return (
                    f"pair {n} ({i}, {j}): the {role} has {layers} layers, so its hidden-state indices "
                    f"run 0-{layers} (0 = embeddings, i = after layer i)"
                )
    return None


def make_projections(
    student_dims: int | Sequence[int], teacher_dims: int | Sequence[int], layer_map: Sequence[tuple[int, int]]
) -> nn.ModuleList:
    """One module per pair of `layer_map`: nn.Linear(student width -> teacher width, no bias,
    TinyBERT's W_h) where the widths differ, nn.Identity where they are equal.

    A width is an int (the same for every hidden state) or a sequence indexed like the hidden
    states (0 = embeddings, i = after layer i). Train the projections with the student.
    """

    def width(dims, index):
        return dims if isinstance(dims, int) else dims[index]

    modules = []
    for i, j in layer_map:
        ds, dt = width(student_dims, i), width(teacher_dims, j)
        modules.append(nn.Identity() if ds == dt else nn.Linear(ds, dt, bias=False))
    return nn.ModuleList(modules)


def hidden_state_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    layer_map: Sequence[tuple[int, int]],
    mask: torch.Tensor,
    kind: str = "cosine",
    projections: nn.ModuleList | None = None,
) -> torch.Tensor:
    """Match student hidden states to teacher hidden states at counted tokens, averaged over pairs.

    `student_hidden` / `teacher_hidden` are Hugging Face `output_hidden_states` tuples: index 0 the
    embeddings, index i the output of layer i, each (batch, seq, width). For each (i, j) of
    `layer_map`, student_hidden[i] (through `projections[n]` for pair n, required where widths
    differ; see `make_projections`) is compared with teacher_hidden[j] per token:
    kind="cosine": 1 - cos(h_S, h_T) (DistilBERT's cosine embedding loss, Sanh et al. 2019,
    arXiv:1910.01108); kind="mse": mean over the width of (h_S - h_T)^2 (TinyBERT, Jiao et al. 2020,
    arXiv:1909.10351). Each pair gives the token-weighted mean; the result is the mean over pairs.
    """
    if kind not in ("cosine", "mse"):
        raise ValueError(f"hidden_state_loss kind must be 'cosine' or 'mse', got {kind!r}")
    if not layer_map:
        raise ValueError("layer_map is empty: name at least one (student layer, teacher layer) pair")
    problem = check_layer_map(layer_map, len(student_hidden) - 1, len(teacher_hidden) - 1)
    if problem:
        raise ValueError(f"layer_map {problem}")
    if projections is not None and len(projections) != len(layer_map):
        raise ValueError(f"{len(projections)} projections for {len(layer_map)} layer pairs: give one per pair")
    losses = []
    for n, (i, j) in enumerate(layer_map):
        h_s, h_t = student_hidden[i], teacher_hidden[j].detach()
        if h_s.shape[:-1] != h_t.shape[:-1]:
            raise ValueError(f"pair {n} ({i}, {j}): student {tuple(h_s.shape)} and teacher {tuple(h_t.shape)} "
                             "hidden states differ in (batch, seq)")
        _check_mask(h_s, mask)
        weights, (rows_s, rows_t) = _counted(mask, h_s, h_t)
        dtype = _compute_dtype(h_s)
        rows_s, rows_t = rows_s.to(dtype), rows_t.to(dtype)
        if projections is not None:
            proj = projections[n]
            param = next(proj.parameters(), None)
            rows_s = proj(rows_s if param is None else rows_s.to(param.dtype)).to(dtype)
        if rows_s.shape[-1] != rows_t.shape[-1]:
            raise ValueError(
                f"pair {n} ({i}, {j}): student width {rows_s.shape[-1]} != teacher width {rows_t.shape[-1]}; "
                "pass projections=make_projections(student_dims, teacher_dims, layer_map)"
            )
        if kind == "cosine":
            per_token = 1.0 - F.cosine_similarity(rows_s, rows_t, dim=-1, eps=1e-8)
        else:
            per_token = (rows_s - rows_t).pow(2).mean(-1)
        losses.append(_token_mean(per_token, weights))
    return torch.stack(losses).mean()


# ----------------------------------------------------------------------------------------------
# registry and masks


LM_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": generalized_jsd,
    "skew_kl": skew_kl,
    "skew_reverse_kl": skew_reverse_kl,
}


def lm_distill_loss(name: str, s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, **params) -> torch.Tensor:
    """Dispatch to `LM_LOSSES[name](s, t, mask, **params)`, with clear errors for a bad name or parameter."""
    fn = LM_LOSSES.get(name)
    if fn is None:
        raise ValueError(f"unknown LM distillation loss {name!r}; known: {', '.join(sorted(LM_LOSSES))}")
    accepted = list(inspect.signature(fn).parameters)[3:]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"LM distillation loss {name!r} takes no parameter {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(accepted) or 'none'}"
        )
    return fn(s, t, mask, **params)


def next_token_mask(labels: torch.Tensor, ignore_index: int = -100, shift: bool = True) -> torch.Tensor:
    """Bool (batch, seq) mask of the logit positions that count, from Hugging Face-style labels.

    `labels` are the input ids with `ignore_index` at padding and prompt tokens (unshifted, as
    passed to a Hugging Face causal LM). Logits at position i predict token i + 1, so with
    `shift=True` mask[:, i] = labels[:, i + 1] != ignore_index and the last position is False; the
    mask then lines up with the (batch, seq, vocab) logits as returned. With `shift=False` (labels
    already aligned with the logits) it is simply labels != ignore_index.
    """
    counted = labels != ignore_index
    if not shift:
        return counted
    mask = torch.zeros_like(counted)
    mask[..., :-1] = counted[..., 1:]
    return mask
