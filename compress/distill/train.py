"""One training loop for teacher, baseline and KD student.

Checkpoints every epoch (atomically) so a killed run resumes where it stopped; keeps the best
weights by validation accuracy; appends one JSON line per epoch to metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.config import TrainConfig
from compress.fileio import atomic_path

# loss_fn(student_logits, labels, batch_indices) -> (loss, {part: value})
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
    loss = F.cross_entropy(logits, labels)
    return loss, {"ce": float(loss.detach())}


@dataclass
class FitResult:
    best_accuracy: float
    best_epoch: int
    epochs_trained: int
    resumed_from: int


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=True)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    x = torch.as_tensor(x)
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else torch.empty(0)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    logits = predict_logits(model, x)
    return float((logits.argmax(1).numpy() == y).mean())


def fit(model: nn.Module, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
        cfg: TrainConfig, work_dir: Path, seed: int, loss_fn: LossFn = cross_entropy_loss,
        log: Callable[[str], None] = print) -> FitResult:
    """Train `model` in place; on return it holds the best weights by val accuracy."""
    work_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path, metrics_path = work_dir / "last.pt", work_dir / "best.pt", work_dir / "metrics.jsonl"
    torch.manual_seed(seed)
    x_t, y_t = torch.as_tensor(x_train), torch.as_tensor(y_train)
    steps_per_epoch = max(1, math.ceil(len(x_t) / cfg.batch_size))
    optimizer = make_optimizer(model, cfg)
    schedule = make_schedule(optimizer, cfg, steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    start_epoch, best_acc, best_epoch = 0, -1.0, -1

    if last_path.exists():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        generator.set_state(state["generator"])
        start_epoch, best_acc, best_epoch = state["epoch"], state["best_accuracy"], state["best_epoch"]
        log(f"resuming from epoch {start_epoch}/{cfg.epochs} (best val top-1 {best_acc:.4f})")
        _truncate_metrics(metrics_path, start_epoch)

    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_t), generator=generator)
        sums: dict[str, float] = {}
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            if len(idx) == 0:
                continue
            loss, parts = loss_fn(model(x_t[idx]), y_t[idx], idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            for key, value in {"loss": float(loss.detach()), **parts}.items():
                sums[key] = sums.get(key, 0.0) + value * len(idx)
        val_acc = accuracy(model, x_val, y_val)
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch + 1
            with atomic_path(best_path) as tmp:
                torch.save(model.state_dict(), tmp)
        record = {"epoch": epoch + 1, **{k: v / len(x_t) for k, v in sums.items()},
                  "lr": optimizer.param_groups[0]["lr"], "val_top1": val_acc,
                  "seconds": round(time.perf_counter() - started, 3)}
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        with atomic_path(last_path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "generator": generator.get_state(),
                        "epoch": epoch + 1, "best_accuracy": best_acc, "best_epoch": best_epoch}, tmp)
        log(f"epoch {epoch + 1}/{cfg.epochs}  loss {record['loss']:.4f}  val top-1 {val_acc:.4f}  "
            f"({record['seconds']:.1f}s)")

    model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True))
    model.eval()
    return FitResult(best_acc, best_epoch, cfg.epochs, start_epoch)


def _truncate_metrics(path: Path, epochs: int) -> None:
    """Drop metric lines of epochs after the checkpoint, written before a crash."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["epoch"] <= epochs]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))
