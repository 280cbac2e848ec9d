"""Training a detector: alone (its own loss on the boxes: FCOS's, RetinaNet's, SSD's) or distilled from a teacher detector.

KD adds, on top of the student's own loss, up to three terms (compress.tasks.object_detection.detection_losses):
feature imitation on the FPN levels (PKD, CWD or FGD, through 1x1 adapters where widths differ and a level map
where strides differ), dense classification KD on the locations where the teacher finds objects, and box
distillation on the decoded boxes weighted by the teacher's score. The teacher runs frozen in eval mode on the
same augmented batch as the student.

Each epoch ends with a checkpoint (weights, adapters, optimizer, schedule position) so a killed run resumes at
the next epoch, and with the val mAP; the weights of the epoch with the best val mAP are kept.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from compress.core.fileio import atomic_path


@dataclass
class FitOptions:
    epochs: int = 12
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    grad_clip: float = 10.0
    seed: int = 0
    image_size: int = 128


@dataclass
class DetectionKD:
    feature: str | None = "pkd"     # pkd | cwd | fgd | None
    feature_weight: float = 2.0
    feature_params: dict[str, Any] = field(default_factory=dict)
    level_map: list[tuple[int, int]] | None = None  # (student level, teacher level); None: by stride
    class_weight: float = 1.0
    temperature: float = 1.0
    score_threshold: float = 0.3
    box_weight: float = 1.0


class KDTerms(torch.nn.Module):
    """The KD losses of one student-teacher pair, with the adapters they train (saved in the checkpoint).

    Feature imitation runs on every level pair. The dense class and box terms compare locations, so they run on
    the pairs whose levels have the same grid (same stride at this input size), each location's most confident
    anchor standing for it (dense_detector.level_views): a RetinaNet teacher's 9 anchors meet an FCOS student's
    one. Without such a pair the two terms are off (`dense_pairs` is empty; the stage log says so).
    """

    def __init__(self, kd: DetectionKD, student_channels: list[int], teacher_channels: list[int],
                 student_strides, teacher_strides):
        super().__init__()
        from compress.tasks.object_detection import detection_losses as losses

        self.kd = kd
        self.pairs = [tuple(p) for p in kd.level_map] if kd.level_map else \
            losses.level_pairs(list(student_strides), list(teacher_strides))
        self.strides = list(teacher_strides)  # feature_kd places ground-truth boxes on the teacher's levels
        self.adapters = losses.make_adapters(student_channels, teacher_channels, self.pairs)
        self.dense_pairs = [(i, j) for i, j in self.pairs if student_strides[i] == teacher_strides[j]]

    def forward(self, student, teacher, targets, image_size: int) -> dict[str, torch.Tensor]:
        from compress.tasks.object_detection import detection_losses as losses
        from compress.tasks.object_detection.dense_detector import level_views

        terms = {}
        if self.kd.feature and self.kd.feature_weight:
            terms["feature"] = self.kd.feature_weight * losses.feature_kd(
                self.kd.feature, student.features, [f.detach() for f in teacher.features], self.adapters,
                self.pairs, [t["boxes"] for t in targets], self.strides, **self.kd.feature_params)
        pairs = [(i, j) for i, j in self.dense_pairs if student.level_shapes[i] == teacher.level_shapes[j]]
        if not pairs or not (self.kd.class_weight or self.kd.box_weight):
            return terms
        ours, theirs = level_views(student), level_views(teacher)
        s_views, t_views = [ours[i] for i, _ in pairs], [theirs[j] for _, j in pairs]
        if self.kd.class_weight:
            terms["class"] = self.kd.class_weight * losses.dense_class_kd(
                torch.cat([v.cls_logits for v in s_views], 1), torch.cat([v.cls_logits for v in t_views], 1),
                self.kd.temperature, self.kd.score_threshold)
        if self.kd.box_weight:
            weights = torch.cat([v.confidence for v in t_views], 1).detach()
            weights = torch.where(weights >= self.kd.score_threshold, weights, torch.zeros_like(weights))
            terms["box"] = self.kd.box_weight * losses.box_kd(
                torch.cat([v.boxes for v in s_views], 1), torch.cat([v.boxes for v in t_views], 1), weights,
                image_size)
        return terms


def train_detector(model, train_records, val_records, options: FitOptions, work_dir: Path,
                   evaluate: Callable[[Any], float], log: Callable[[str], None], augment=None,
                   teacher=None, kd: DetectionKD | None = None) -> dict[str, Any]:
    """Train `model` in place; returns the history. `evaluate(model) -> val mAP` picks the epoch kept."""
    from compress.tasks.object_detection.detection_data import make_loader

    torch.manual_seed(options.seed)
    terms = None
    if teacher is not None and kd is not None:
        teacher.eval().requires_grad_(False)
        terms = KDTerms(kd, model.feature_channels, teacher.feature_channels, model.strides, teacher.strides)
        if not terms.dense_pairs and (kd.class_weight or kd.box_weight):
            log("KD: no student level has a teacher level of its stride: the class and box terms are off, "
                "features only")
    loader = make_loader(train_records, options.image_size, options.batch_size, True, augment, options.seed, 0)
    parameters = list(model.parameters()) + (list(terms.parameters()) if terms is not None else [])
    optimizer = torch.optim.AdamW(parameters, lr=options.lr, weight_decay=options.weight_decay)
    steps = max(1, options.epochs * len(loader))
    warmup = max(1, int(options.warmup_fraction * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = work_dir / "checkpoint.pt"
    history: list[dict[str, Any]] = []
    best = {"map": -1.0, "epoch": 0, "state": None}
    start_epoch = 0
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        if terms is not None and saved.get("terms") is not None:
            terms.load_state_dict(saved["terms"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        start_epoch, history = saved["epoch"], json.loads(saved["history"])
        best = {"map": saved["best_map"], "epoch": saved["best_epoch"], "state": saved["best_state"]}
        log(f"resuming after epoch {start_epoch} of {options.epochs}")
    for epoch in range(start_epoch, options.epochs):
        started = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        for images, targets in loader:
            out = model.dense(images)
            losses = model.detection_loss(out, targets)
            total = losses["total"]
            if terms is not None:
                with torch.no_grad():
                    teacher_out = teacher.dense(images)
                extra = terms(out, teacher_out, targets, options.image_size)
                losses.update({f"kd_{k}": v for k, v in extra.items()})
                total = total + sum(extra.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(parameters, options.grad_clip)
            optimizer.step()
            schedule.step()
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        model.eval()
        val_map = evaluate(model)
        record = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - started, 1), "val_map": val_map,
                  **{k: round(v / max(1, len(loader)), 4) for k, v in sums.items()}}
        history.append(record)
        log(f"epoch {epoch + 1}/{options.epochs}: loss {record['total']:.3f}"
            + "".join(f", {k} {record[k]:.3f}" for k in record if k.startswith("kd_"))
            + f", val mAP {val_map:.3f} ({record['seconds']:.0f} s)")
        if val_map > best["map"]:
            best = {"map": val_map, "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
        with atomic_path(checkpoint) as tmp:
            torch.save({"model": model.state_dict(), "terms": terms.state_dict() if terms is not None else None,
                        "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "epoch": epoch + 1,
                        "history": json.dumps(history), "best_map": best["map"], "best_epoch": best["epoch"],
                        "best_state": best["state"]}, tmp)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return {"epochs": history, "best_epoch": best["epoch"], "best_val_map": best["map"]}
