"""The detector interface of this task: the dense outputs training, KD, export and evaluation read.

A detector of any family (the FCOS built here, torchvision's FCOS / RetinaNet / SSD, a user's own) is a
`DenseDetector`; the training loop, the KD terms, the ONNX forms and the engines see nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class DenseOutput:
    """A dense detector's outputs per location (per anchor where a location has several), level-major, row-major.

    `cls_logits` are per-class sigmoid logits (a softmax head gives the logits of its class probabilities), so
    the dense KD terms compare any two detectors; `scores` are what the export form carries.
    """

    features: list[torch.Tensor]   # feature levels [B, F, H_l, W_l]
    cls_logits: torch.Tensor       # [B, A, C]
    boxes: torch.Tensor            # [B, A, 4] xyxy in input pixels
    scores: torch.Tensor | None = None           # [B, A, C] in [0, 1]
    level_shapes: list[tuple[int, int]] = field(default_factory=list)  # (H_l, W_l) of each level
    anchors_per_location: list[int] = field(default_factory=list)      # per level; 1 for anchor-free heads
    distances: torch.Tensor | None = None        # [B, A, 4] left, top, right, bottom (FCOS)
    centerness: torch.Tensor | None = None       # [B, A] logits (FCOS)
    points: torch.Tensor | None = None           # [A, 2] location centres (x, y)
    strides: torch.Tensor | None = None          # [A] stride of each location's level
    extras: dict = field(default_factory=dict)   # what a detector's own loss needs (head outputs, anchors)


class DenseDetector(nn.Module):
    """What this task needs of a detector; subclass it for a `package.module:factory` detector of your own.

    `dense(images)` takes float RGB [B, 3, S, S] in [0, 1] (letterboxed, not normalized) and returns a
    DenseOutput with `scores`, `level_shapes` and `anchors_per_location` filled; `detection_loss(out, targets)`
    is the supervised loss ({"total": ..., other terms}) against targets [{"boxes" [N, 4] xyxy input pixels,
    "labels" [N] in 0..C-1}]; `num_classes` is C. `forward` is the export form [B, A, 4 + C] (boxes, scores).
    The feature levels' strides and widths, which KD pairs and adapts, come from one probe of `dense`'s features.
    """

    num_classes: int
    PROBE_SIZE = 512

    def dense(self, images: torch.Tensor) -> DenseOutput:
        raise NotImplementedError

    def detection_loss(self, out: DenseOutput, targets: list[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def level_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The feature levels alone (a probe needs no head); by default through `dense`."""
        return self.dense(images).features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.dense(images)
        return torch.cat([out.boxes, out.scores], -1)

    def _probe(self) -> tuple[list[int], list[int]]:
        cached = self.__dict__.get("_probed")
        if cached is None:
            reference = next(self.parameters())
            was_training = self.training
            with torch.no_grad():
                features = self.eval().level_features(
                    torch.zeros(1, 3, self.PROBE_SIZE, self.PROBE_SIZE, device=reference.device))
            self.train(was_training)
            cached = ([max(1, round(self.PROBE_SIZE / f.shape[-1])) for f in features], [f.shape[1] for f in features])
            self.__dict__["_probed"] = cached
        return cached

    @property
    def strides(self) -> list[int]:
        return self._probe()[0]

    @property
    def feature_channels(self) -> list[int]:
        return self._probe()[1]


@dataclass
class LevelView:
    """One feature level's outputs with one row per location: the anchor the detector is surest of."""

    cls_logits: torch.Tensor   # [B, H*W, C]
    boxes: torch.Tensor        # [B, H*W, 4]
    confidence: torch.Tensor   # [B, H*W] the best class score there


def level_views(out: DenseOutput) -> list[LevelView]:
    """Per level, each location's most confident anchor (anchor-free heads: the location itself).

    Dense KD compares a student and a teacher location by location; where a head has several anchors per
    location (RetinaNet's 9, SSD's 4 or 6) the one with the highest class score speaks for the location, so a
    teacher and a student of different families still meet on the grid they share.
    """
    views, start = [], 0
    scores = out.scores if out.scores is not None else torch.sigmoid(out.cls_logits)
    batch = out.cls_logits.shape[0]
    for (height, width), anchors in zip(out.level_shapes, out.anchors_per_location):
        count = height * width * anchors
        cls = out.cls_logits[:, start:start + count].reshape(batch, height * width, anchors, -1)
        boxes = out.boxes[:, start:start + count].reshape(batch, height * width, anchors, 4)
        best = scores[:, start:start + count].reshape(batch, height * width, anchors, -1).amax(-1)
        confidence, chosen = best.max(-1)
        pick = chosen[..., None, None]
        views.append(LevelView(cls.gather(2, pick.expand(-1, -1, 1, cls.shape[-1]))[:, :, 0],
                               boxes.gather(2, pick.expand(-1, -1, 1, 4))[:, :, 0], confidence))
        start += count
    return views
