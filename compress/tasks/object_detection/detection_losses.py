"""Knowledge-distillation losses for dense object detectors (teacher detector -> smaller student).

Conventions shared by every loss here:

* Feature maps are FPN levels (batch, channels, H, W). A student level is compared with one teacher
  level (`level_pairs` / `check_level_map`); where the widths differ the student map first goes
  through a `FeatureAdapter` (1x1 conv, trained with the student), and where the sizes differ it is
  resized to the teacher's H, W (`align`). `feature_kd` does both and averages over the pairs.
* Head outputs are per location: `cls_logits` (batch, A, num_classes) for sigmoid (focal-style)
  classifiers and decoded `boxes` (batch, A, 4) xyxy in input pixels, A the locations of all levels
  (level-major, row-major), the same A for teacher and student when their strides match.
* Ground-truth boxes are a list with one float (N, 4) xyxy tensor per image in input pixels (N may
  be 0).
* The teacher is detached everywhere: gradient flows to the student (and adapters) only.
* Computed in float32 (float64 stays float64), so half-precision maps do not overflow the sums.
* Per-location losses drop the locations that do not count *before* any arithmetic, so whatever
  they hold neither changes the value nor reaches the gradient; with nothing counted the loss is 0
  and still attached to the student's graph.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss

PKD_EPS = 1e-6  # added to the standard deviation, as in mmrazor's PKDLoss.norm


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _pair(s: torch.Tensor, t: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and detached teacher (batch, C, H, W) maps of one shape, in the compute dtype."""
    if s.dim() != 4 or s.shape != t.shape:
        raise ValueError(
            f"{name}: student {tuple(s.shape)} and teacher {tuple(t.shape)} must both be (batch, C, H, W) of one "
            "shape; adapt the channels (make_adapters) and resize the student map (align) first"
        )
    dtype = _compute_dtype(s)
    return s.to(dtype), t.detach().to(dtype)


def _check_temperature(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


# ----------------------------------------------------------------------------------------------
# feature losses


def _standardize(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    count = math.prod(x.shape[d] for d in dims)
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, correction=1 if count > 1 else 0)
    return (x - mean) / (std + PKD_EPS)


def pkd_loss(student: torch.Tensor, teacher: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
    """PKD: MSE between standardized feature maps, halved.

    Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson Correlation
    Coefficient", NeurIPS 2022 (arXiv:2207.02039). Standardizing both maps and taking the MSE equals
    1 - r (r the Pearson correlation) up to a constant, so the student copies where the teacher's
    channels are high or low, not their magnitude: heterogeneous teachers and loud FPN levels or
    channels no longer dominate the loss.

    Exact form of the reference implementation (mmrazor `PKDLoss`, released with the paper): each
    channel is standardized over the *batch and* the spatial positions (mean and unbiased standard
    deviation over N*H*W, x_hat = (x - mean) / (std + 1e-6)), then
    loss = F.mse_loss(x_hat_S, x_hat_T) / 2, the mean over all N*C*H*W elements. With
    `per_sample=True` each sample's channel is standardized over its own H*W positions instead
    (instance-norm style; the same value at batch size 1). A single position gets std 0 (no NaN).
    """
    s, t = _pair(student, teacher, "pkd_loss")
    dims = (2, 3) if per_sample else (0, 2, 3)
    return F.mse_loss(_standardize(s, dims), _standardize(t, dims)) / 2


def cwd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Channel-wise distillation: per channel, KL between spatial softmaxes, times tau^2.

    Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021
    (arXiv:2011.13256). Each channel's map becomes a distribution over the H*W positions,
    softmax(x / tau); the loss is KL(teacher || student) summed over positions, times tau^2, and
    averaged over the N*C channel maps (mmrazor `ChannelWiseDivergence`). Channels mark where
    things are, so the student learns the teacher's most salient places per channel.
    """
    _check_temperature("tau", tau)
    s, t = _pair(student, teacher, "cwd_loss")
    n, c = s.shape[:2]
    log_q = F.log_softmax(s.reshape(n * c, -1) / tau, dim=1)
    log_p = F.log_softmax(t.reshape(n * c, -1) / tau, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum() * (tau * tau) / (n * c)


def fgd_masks(
    gt_boxes: Sequence[torch.Tensor], height: int, width: int, stride: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """FGD's foreground and background masks, each (batch, height, width).

    As mmrazor's / mmdetection's `FGDLoss` (and the authors' code): a box is mapped to feature
    pixels (here divided by `stride`; they scale by map size / image size, the same when the input
    is a multiple of the stride), widened to whole cells with floor(x1), ceil(x2), floor(y1),
    ceil(y2), and the cells of rows floor(y1)..ceil(y2) and columns floor(x1)..ceil(x2) *inclusive*
    (one more row and column than the box covers, as theirs) get 1 / (rows * cols); where boxes
    overlap the larger weight (the smaller box) stays. So every object weighs about the same
    whatever its size. The background mask is 1 off the foreground, divided by its count (all 0
    when there is none). Cells beyond the map are cut off, but the weight keeps the full count;
    a box with x2 < x1 or y2 < y1 is ignored. The masks are float32 on `device` (default: the
    boxes' device).
    """
    if device is None:
        device = gt_boxes[0].device if len(gt_boxes) else torch.device("cpu")
    ys = torch.arange(height, device=device).view(1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, width)
    fg = []
    for boxes in gt_boxes:
        b = boxes.detach().to(device=device, dtype=torch.float32).reshape(-1, 4) / stride
        b = b[(b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1])]
        x1, y1 = b[:, 0].floor().view(-1, 1, 1), b[:, 1].floor().view(-1, 1, 1)
        x2, y2 = b[:, 2].ceil().view(-1, 1, 1), b[:, 3].ceil().view(-1, 1, 1)
        weight = 1.0 / ((y2 - y1 + 1) * (x2 - x1 + 1))
        inside = (ys >= y1) & (ys <= y2) & (xs >= x1) & (xs <= x2)
        fg.append((inside * weight).amax(dim=0) if len(b) else torch.zeros(height, width, device=device))
    mask_fg = torch.stack(fg) if fg else torch.zeros(0, height, width, device=device)
    mask_bg = (mask_fg == 0).to(torch.float32)
    mask_bg = mask_bg / mask_bg.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
    return mask_fg, mask_bg


def fgd_attention(x: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FGD's spatial (batch, H, W) and channel (batch, C) attention of a feature map.

    A_S = H*W * softmax_over_positions(mean_over_channels |x| / T),
    A_C = C * softmax_over_channels(mean_over_positions |x| / T) (mmrazor `FGDLoss.get_attention`);
    the H*W and C factors make each attention average 1.
    """
    n, c, h, w = x.shape
    value = x.abs()
    spatial = h * w * F.softmax(value.mean(dim=1).reshape(n, -1) / temperature, dim=1).reshape(n, h, w)
    channel = c * F.softmax(value.mean(dim=(2, 3)) / temperature, dim=1)
    return spatial, channel


def fgd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    gt_boxes: Sequence[torch.Tensor],
    stride: int,
    temperature: float = 0.5,
    alpha: float = 1e-3,
    beta: float = 5e-4,
    gamma: float = 1e-3,
) -> torch.Tensor:
    """FGD, focal and attention parts: alpha * L_fg + beta * L_bg + gamma * L_at.

    Yang et al., "Focal and Global Knowledge Distillation for Detectors", CVPR 2022
    (arXiv:2111.11837). Foreground and background are imitated separately (the background would
    swamp the few object cells), each cell and channel weighted by where the teacher looks:

        L_fg = sum_{n,c,h,w} M_fg * A_S^T * A_C^T * (F_T - F_S)^2 / N      (M_bg for L_bg)
        L_at = (sum |A_C^T - A_C^S| + sum |A_S^T - A_S^S|) / N

    with the masks of `fgd_masks` (from `gt_boxes` and the map's `stride`), the attentions of
    `fgd_attention` at `temperature`, and N the batch size: mmrazor's `FGDLoss` normalization
    (reduction 'sum' divided by the batch size, not a mean over elements). The student's attention
    gets gradient only through L_at. Left out: FGD's global part (the GcBlock relation loss,
    lambda = 5e-6), which needs its own trained GcBlocks per level.
    """
    _check_temperature("temperature", temperature)
    s, t = _pair(student, teacher, "fgd_loss")
    n, _, h, w = s.shape
    if len(gt_boxes) != n:
        raise ValueError(f"fgd_loss: {len(gt_boxes)} ground-truth box tensors for a batch of {n}")
    mask_fg, mask_bg = (m.to(s.dtype) for m in fgd_masks(gt_boxes, h, w, stride, s.device))
    spatial_t, channel_t = fgd_attention(t, temperature)
    spatial_s, channel_s = fgd_attention(s, temperature)
    weighted = (t - s).pow(2) * spatial_t[:, None] * channel_t[:, :, None, None]
    loss_fg = (weighted * mask_fg[:, None]).sum() / n
    loss_bg = (weighted * mask_bg[:, None]).sum() / n
    loss_at = ((channel_t - channel_s).abs().sum() + (spatial_t - spatial_s).abs().sum()) / n
    return alpha * loss_fg + beta * loss_bg + gamma * loss_at


# ----------------------------------------------------------------------------------------------
# head losses


def dense_class_kd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0, score_threshold: float = 0.3
) -> torch.Tensor:
    """Hinton-style KD per location for sigmoid classifiers, at the locations the teacher finds objects.

    Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531),
    in its binary form for per-class sigmoid scores: with p = sigmoid(t / T), q = sigmoid(s / T),

        per location: T^2 * sum_classes [p log(p / q) + (1 - p) log((1 - p) / (1 - q))]

    averaged over the locations whose teacher score max_c sigmoid(t) (at T = 1, the detector's own
    score) is >= `score_threshold`: the many background locations would otherwise drown the few
    that carry knowledge. Computed from log-sigmoids, so saturated logits stay finite.
    """
    _check_temperature("temperature", temperature)
    if student_logits.dim() != 3 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"dense_class_kd: student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
            "logits must both be (batch, locations, classes) of one shape"
        )
    t = teacher_logits.detach()
    keep = torch.sigmoid(t.to(_compute_dtype(t))).amax(dim=-1) >= score_threshold
    dtype = _compute_dtype(student_logits)
    s_rows, t_rows = student_logits[keep].to(dtype) / temperature, t[keep].to(dtype) / temperature
    log_p, log_1p = F.logsigmoid(t_rows), F.logsigmoid(-t_rows)
    log_q, log_1q = F.logsigmoid(s_rows), F.logsigmoid(-s_rows)
    per_class = log_p.exp() * (log_p - log_q) + log_1p.exp() * (log_1p - log_1q)
    return per_class.sum() * (temperature * temperature) / max(int(keep.sum()), 1)


def box_kd_weights(teacher_logits: torch.Tensor) -> torch.Tensor:
    """The teacher's max class score per location, (batch, A), detached: `box_kd`'s weights."""
    t = teacher_logits.detach()
    return torch.sigmoid(t.to(_compute_dtype(t))).amax(dim=-1)


def box_kd(
    student_boxes: torch.Tensor,
    teacher_boxes: torch.Tensor,
    weights: torch.Tensor,
    image_size: int | tuple[int, int],
) -> torch.Tensor:
    """Localization distillation on decoded boxes: weighted L1 (normalized) + weighted GIoU loss.

    In the spirit of LD (Zheng et al., "Localization Distillation for Dense Object Detection",
    CVPR 2022), which distils box-edge distributions; here the student's decoded boxes follow the
    teacher's, for heads without a distribution. Per location, with the boxes (batch, A, 4) xyxy in
    input pixels and `image_size` the input's side (or (width, height)):

        L1 = sum_{4 coordinates} |b_S - b_T| / (W, H, W, H)   (summed over coordinates, as DETR)
        GIoU = torchvision.ops.generalized_box_iou_loss(b_S, b_T) on the pixel boxes (Rezatofighi et
               al. CVPR 2019; pixels, so its eps 1e-7 is negligible even for small boxes)

    loss = sum_w (w * (L1 + GIoU)) / sum(w) over the locations with weight > 0; `weights` (batch, A)
    are meant to be the teacher's confidence (`box_kd_weights`), so the student copies the boxes
    the teacher is sure of. Zero total weight: 0. GIoU expects x2 >= x1, y2 >= y1 (decoded boxes).
    """
    if student_boxes.dim() != 3 or student_boxes.shape[-1] != 4 or student_boxes.shape != teacher_boxes.shape:
        raise ValueError(
            f"box_kd: student {tuple(student_boxes.shape)} and teacher {tuple(teacher_boxes.shape)} boxes must both "
            "be (batch, locations, 4)"
        )
    if tuple(weights.shape) != tuple(student_boxes.shape[:2]):
        raise ValueError(
            f"box_kd: weights {tuple(weights.shape)} must be (batch, locations) = {tuple(student_boxes.shape[:2])}"
        )
    img_w, img_h = (image_size, image_size) if isinstance(image_size, (int, float)) else image_size
    w = weights.detach()
    keep = w > 0
    dtype = _compute_dtype(student_boxes)
    s, t, w = student_boxes[keep].to(dtype), teacher_boxes.detach()[keep].to(dtype), w[keep].to(dtype)
    scale = torch.tensor([img_w, img_h, img_w, img_h], dtype=dtype, device=s.device)
    l1 = ((s - t).abs() / scale).sum(dim=-1)
    giou = generalized_box_iou_loss(s, t, reduction="none")
    return (w * (l1 + giou)).sum() / w.sum().clamp_min(torch.finfo(dtype).tiny)


# ----------------------------------------------------------------------------------------------
# levels and adapters


class FeatureAdapter(nn.Module):
    """1x1 conv from the student's width to the teacher's, trained with the student (FitNets'
    regressor, Romero et al. ICLR 2015). Default init: no identity exists across widths."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def make_adapters(
    student_channels: Sequence[int], teacher_channels: Sequence[int], pairs: Sequence[tuple[int, int]]
) -> nn.ModuleList:
    """One module per (student level, teacher level) pair: a FeatureAdapter where the widths differ,
    nn.Identity where they are equal."""
    return nn.ModuleList(
        nn.Identity() if (cs := student_channels[i]) == (ct := teacher_channels[j]) else FeatureAdapter(cs, ct)
        for i, j in pairs
    )


def level_pairs(student_strides: Sequence[int], teacher_strides: Sequence[int]) -> list[tuple[int, int]]:
    """(student level, teacher level) for every student level: the teacher level of the same stride,
    else the nearest one in scale (smallest |log(s_t / s_s)|; on a tie, the finer teacher level)."""
    if not teacher_strides:
        raise ValueError("level_pairs: the teacher has no levels")
    if not all(x > 0 for x in (*student_strides, *teacher_strides)):
        raise ValueError(f"level_pairs: strides must be > 0, got {list(student_strides)} and {list(teacher_strides)}")
    return [
        (i, min(range(len(teacher_strides)), key=lambda j: (abs(math.log(teacher_strides[j] / s)), teacher_strides[j])))
        for i, s in enumerate(student_strides)
    ]


def check_level_map(pairs: Sequence[tuple[int, int]], student_levels: int, teacher_levels: int) -> str | None:
    """A message naming the first bad (student level, teacher level) pair, or None when all fit.

    Levels are numbered from 0 (finest first, as the feature lists); pairs are numbered from 0 too.
    Flags: no pairs, a pair that is not two integers, an index out of range, the same pair twice.
    """
    if not pairs:
        return "no level pairs: give at least one (student level, teacher level)"
    seen: dict[tuple[int, int], int] = {}
    for n, pair in enumerate(pairs):
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
        ):
            return f"pair {n} {pair!r}: expected (student level, teacher level), two integers"
        i, j = pair
        for role, index, levels in (("student", i, student_levels), ("teacher", j, teacher_levels)):
            if not 0 <= index < levels:
                return f"pair {n} ({i}, {j}): the {role} has {levels} feature levels, numbered 0-{levels - 1}"
        if (i, j) in seen:
            return f"pair {n} ({i}, {j}) repeats pair {seen[(i, j)]}"
        seen[(i, j)] = n
    return None


def align(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """The student map resized to the teacher's H, W (bilinear, align_corners=False) when they differ."""
    if student_feature.shape[-2:] == teacher_feature.shape[-2:]:
        return student_feature
    return F.interpolate(student_feature, size=tuple(teacher_feature.shape[-2:]), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------
# registry


FEATURE_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"pkd": pkd_loss, "cwd": cwd_loss, "fgd": fgd_loss}
_POSITIONAL = {"pkd": 2, "cwd": 2, "fgd": 4}  # student, teacher (, gt_boxes, stride)


def feature_kd(
    kind: str,
    student_features: Sequence[torch.Tensor],
    teacher_features: Sequence[torch.Tensor],
    adapters: nn.ModuleList | None,
    pairs: Sequence[tuple[int, int]],
    gt_boxes: Sequence[torch.Tensor] | None,
    strides: Sequence[int] | None,
    **params,
) -> torch.Tensor:
    """`FEATURE_LOSSES[kind]` averaged over the (student level, teacher level) `pairs`.

    For pair n = (i, j): student_features[i] goes through adapters[n] (one per pair, see
    `make_adapters`; None when all widths match), then `align` to teacher_features[j]'s size.
    `strides` are the *teacher's* level strides (the aligned student map has the teacher's grid)
    and `gt_boxes` the per-image boxes in input pixels; only "fgd" needs them. `params` go to
    the loss (e.g. tau for "cwd", temperature/alpha/beta/gamma for "fgd", per_sample for "pkd").
    """
    fn = FEATURE_LOSSES.get(kind)
    if fn is None:
        raise ValueError(f"unknown feature distillation loss {kind!r}; known: {', '.join(sorted(FEATURE_LOSSES))}")
    accepted = list(inspect.signature(fn).parameters)[_POSITIONAL[kind]:]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"feature distillation loss {kind!r} takes no parameter {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(accepted) or 'none'}"
        )
    problem = check_level_map(pairs, len(student_features), len(teacher_features))
    if problem:
        raise ValueError(f"level pairs: {problem}")
    if adapters is not None and len(adapters) != len(pairs):
        raise ValueError(f"{len(adapters)} adapters for {len(pairs)} level pairs: give one per pair (make_adapters)")
    if kind == "fgd" and (gt_boxes is None or strides is None or len(strides) != len(teacher_features)):
        raise ValueError("fgd needs gt_boxes (one tensor per image) and strides (one per teacher level)")
    losses = []
    for n, (i, j) in enumerate(pairs):
        s, t = student_features[i], teacher_features[j]
        if adapters is not None:
            s = adapters[n](s)
        if s.shape[1] != t.shape[1]:
            raise ValueError(
                f"pair {n} ({i}, {j}): student width {s.shape[1]} != teacher width {t.shape[1]}; "
                "pass adapters=make_adapters(student_channels, teacher_channels, pairs)"
            )
        s = align(s, t)
        if kind == "fgd":
            losses.append(fn(s, t, gt_boxes, strides[j], **params))
        else:
            losses.append(fn(s, t, **params))
    return torch.stack(losses).mean()
