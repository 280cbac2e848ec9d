"""The detector's supervised loss: FCOS's targets and losses (Tian et al., ICCV 2019; the FCOS v2 improvements).

A location is positive for a ground-truth box when it lies inside the box's centre region (1.5 strides around its
centre: centre sampling) and its largest distance to the box sides falls in its level's range (so small boxes go
to fine levels); among several boxes it takes the smallest. Classification is the sigmoid focal loss over every
location (Lin et al., ICCV 2017), boxes the GIoU loss on positives weighted by their centerness target, centerness
a binary cross-entropy on positives; the first two are normalized by the number of positives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

CENTRE_RADIUS = 1.5
# Each level takes boxes whose largest side distance is in (lower, upper]: FCOS's 0, 64, 128, inf for strides 8-32.
RANGE_PER_STRIDE = 8


@dataclass
class Targets:
    labels: torch.Tensor      # [B, A] class index, -1 for background
    boxes: torch.Tensor       # [B, A, 4] the assigned box (xyxy), zeros for background
    centerness: torch.Tensor  # [B, A] centerness target of positives, 0 elsewhere


def assign(points: torch.Tensor, strides: torch.Tensor, targets: list[dict]) -> Targets:
    """FCOS targets of every location of every image (`targets`: {"boxes" [N, 4], "labels" [N]} per image)."""
    batch, count = len(targets), points.shape[0]
    labels = torch.full((batch, count), -1, dtype=torch.long, device=points.device)
    boxes = torch.zeros((batch, count, 4), device=points.device)
    centerness = torch.zeros((batch, count), device=points.device)
    lower = torch.where(strides == strides.min(), torch.zeros_like(strides), strides / 2 * RANGE_PER_STRIDE)
    upper = torch.where(strides == strides.max(), torch.full_like(strides, float("inf")), strides * RANGE_PER_STRIDE)
    for i, target in enumerate(targets):
        gt = target["boxes"].to(points.device)
        if gt.numel() == 0:
            continue
        x, y = points[:, 0:1], points[:, 1:2]
        sides = torch.stack([x - gt[:, 0], y - gt[:, 1], gt[:, 2] - x, gt[:, 3] - y], -1)  # [A, N, 4]
        centres = (gt[:, :2] + gt[:, 2:]) / 2
        radius = strides[:, None] * CENTRE_RADIUS
        region = torch.stack([torch.maximum(centres[:, 0] - radius, gt[:, 0]),
                              torch.maximum(centres[:, 1] - radius, gt[:, 1]),
                              torch.minimum(centres[:, 0] + radius, gt[:, 2]),
                              torch.minimum(centres[:, 1] + radius, gt[:, 3])], -1)
        in_centre = (x > region[..., 0]) & (y > region[..., 1]) & (x < region[..., 2]) & (y < region[..., 3])
        largest = sides.max(-1).values
        in_range = (largest > lower[:, None]) & (largest <= upper[:, None])
        area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[None].expand(count, -1)
        area = torch.where(in_centre & in_range & (sides.min(-1).values > 0), area, torch.full_like(area, float("inf")))
        smallest, chosen = area.min(1)
        positive = torch.isfinite(smallest)
        labels[i, positive] = target["labels"].to(points.device)[chosen[positive]]
        boxes[i, positive] = gt[chosen[positive]]
        chosen_sides = sides[torch.arange(count, device=points.device), chosen][positive].clamp(min=1e-6)
        left_right, top_bottom = chosen_sides[:, [0, 2]], chosen_sides[:, [1, 3]]
        centerness[i, positive] = torch.sqrt((left_right.min(-1).values / left_right.max(-1).values)
                                             * (top_bottom.min(-1).values / top_bottom.max(-1).values))
    return Targets(labels, boxes, centerness)


def fcos_loss(out, targets: list[dict], num_classes: int) -> dict[str, torch.Tensor]:
    """{"classification", "box", "centerness", "total"} of a DenseOutput against the images' ground truth."""
    assigned = assign(out.points, out.strides, targets)
    positive = assigned.labels >= 0
    positives = max(float(positive.sum()), 1.0)
    one_hot = F.one_hot(assigned.labels.clamp(min=0), num_classes).float() * positive.unsqueeze(-1)
    classification = sigmoid_focal_loss(out.cls_logits, one_hot, reduction="sum") / positives
    if positive.any():
        weights = assigned.centerness[positive]
        box = (generalized_box_iou_loss(out.boxes[positive], assigned.boxes[positive], reduction="none")
               * weights).sum() / weights.sum().clamp(min=1e-6)
        centerness = F.binary_cross_entropy_with_logits(out.centerness[positive], assigned.centerness[positive])
    else:
        box = centerness = out.boxes.sum() * 0.0
    return {"classification": classification, "box": box, "centerness": centerness,
            "total": classification + box + centerness}
