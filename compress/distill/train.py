"""One training loop for teacher, baseline and KD student.

Checkpoints every epoch (atomically) so a killed run resumes where it stopped and ends with the
same weights as an uninterrupted one (shuffling and augmentation are seeded per epoch); keeps the
best weights by validation accuracy; appends one JSON line per epoch to metrics.jsonl and, when
tensorboard is installed, writes TensorBoard events. Under torch.distributed (torchrun) the data
is sharded with a DistributedSampler, the model is wrapped in DDP and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler

from compress.config import TrainConfig
from compress.core.fileio import atomic_path

from compress.data.splits import NO_LABEL, ArraySplit, Split
from compress.tasks.inputs import call_model, count, rows, to_tensors


@dataclass
class Batch:
    x: torch.Tensor        # inputs after augmentation
    labels: torch.Tensor   # int64, NO_LABEL where an input has no label (transfer set)
    indices: torch.Tensor  # positions in the training split (what a teacher-output cache is keyed by)
    # MixUp/CutMix: (N, K) class probabilities of the mixed inputs; `labels` then holds their argmax.
    soft_labels: torch.Tensor | None = None


# loss_fn(student_logits, batch) -> (loss, {part name: value})
LossFn = Callable[[torch.Tensor, Batch], tuple[torch.Tensor, dict[str, float]]]


def cross_entropy_loss(label_smoothing: float = 0.0) -> LossFn:
    def loss_fn(logits: torch.Tensor, batch: Batch):
        if batch.soft_labels is not None:
            loss = F.cross_entropy(logits.float(), batch.soft_labels, label_smoothing=label_smoothing)
        else:
            loss = F.cross_entropy(logits.float(), batch.labels, ignore_index=NO_LABEL,
                                   label_smoothing=label_smoothing)
        return loss, {"ce": float(loss.detach())}

    return loss_fn


@dataclass
class FitResult:
    best_accuracy: float
    best_epoch: int
    epochs_trained: int  # the last epoch trained: cfg.epochs unless on_epoch stopped it sooner
    resumed_from: int


def training_device() -> torch.device:
    if torch.cuda.is_available():
        index = dist.get_rank() % torch.cuda.device_count() if dist.is_initialized() else 0
        return torch.device("cuda", index)
    return torch.device("cpu")


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """`params`: a model or an iterable of parameters (student plus connectors)."""
    params = list(params.parameters() if isinstance(params, nn.Module) else params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine / step / constant; a function of the optimizer step."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            progress = min(step - warmup, total - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.schedule == "step":
            return cfg.lr_gamma ** sum(1 for e in cfg.lr_steps if step >= e * steps_per_epoch)
        return 1.0

    return factor


def augment(x: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding, random horizontal flip; vectorised over the batch."""
    if cfg.crop_padding:
        p, (n, c, h, w) = cfg.crop_padding, x.shape
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        x = padded[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None],
                   rows, cols]
    if cfg.flip:
        flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def augments(cfg: TrainConfig) -> bool:
    """Whether the array augmentation is on (then inputs change between epochs, a teacher-output cache is invalid)."""
    return bool(cfg.crop_padding or cfg.flip)


def training_split(split: Split, cfg: TrainConfig) -> Split:
    """The split with the stage's pad-crop/flip applied on the device when it holds arrays."""
    if isinstance(split, ArraySplit) and augments(cfg):
        augmented = copy.copy(split)  # the same arrays (no copy of the data), this stage's augmentation
        augmented.augment = lambda x, generator: augment(x, cfg, generator)
        return augmented
    return split


def autocast(cfg: TrainConfig, device: torch.device):
    if not cfg.amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def predict_logits(model: nn.Module, x, batch_size: int = 256) -> torch.Tensor:
    """Logits of `x` (one array, or a dict of named arrays for a text model) in batches, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    total = count(x)
    if not total:
        return torch.empty(0)
    return torch.cat([call_model(model, to_tensors(rows(x, i, i + batch_size), device)).float().cpu()
                      for i in range(0, total, batch_size)])


def model_infer(model: nn.Module):
    """numpy batch -> numpy logits through a torch model (what compress.data.splits.predict takes)."""
    return lambda x: predict_logits(model, x).numpy()


def accuracy(model: nn.Module, split: Split) -> float:
    """Top-1 of `model` on a whole split, read batch by batch."""
    from compress.data.splits import predict

    logits, labels = predict(model_infer(model), split)
    return float((logits.argmax(1) == labels).mean()) if len(labels) else 0.0


# `compress --quiet` turns progress bars off for the whole process.
SHOW_PROGRESS = True
# Off a terminal (CI, `| tee`, nohup) a progress line every this many seconds instead of a bar.
PROGRESS_SECONDS = 30.0


class ProgressBar:
    """Progress inside an epoch, only on rank 0: a transient rich bar on a terminal; elsewhere a log
    line every PROGRESS_SECONDS, so a long epoch is not minutes of silence in a CI log."""

    def __init__(self, enabled: bool, total: int, description: str, log: Callable[[str], None] | None = None):
        self.progress = None
        self.log = None
        self.total, self.done, self.description = total, 0, description
        if not (enabled and SHOW_PROGRESS):
            return
        if sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self.progress = Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                     transient=True)
            self.progress.start()
            self.task = self.progress.add_task(description, total=total)
        elif log is not None:
            self.log = log
            self.started = self.last = time.monotonic()

    def advance(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress.advance(self.task)
        elif self.log is not None and self.done < self.total and time.monotonic() - self.last >= PROGRESS_SECONDS:
            self.last = time.monotonic()
            self.log(f"{self.description}: {self.done}/{self.total} batches ({self.done / self.total:.0%}), "
                     f"{self.last - self.started:.0f}s")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def tensorboard_writer(work_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(work_dir / "tensorboard"))


def fit(model: nn.Module, train: Split, val: Split, cfg: TrainConfig, work_dir: Path, seed: int,
        loss_fn: LossFn | None = None, log: Callable[[str], None] = print, extra_modules: nn.Module | None = None,
        distributed: bool = False, mixer: Callable | None = None,
        on_epoch: Callable[[int, float], bool] | None = None) -> FitResult:
    """Train `model` in place; on return it holds the best weights by val accuracy (on the CPU).

    `train`'s labels may be NO_LABEL for inputs without a label; `extra_modules` (e.g. FitNets
    connectors) are optimised and checkpointed with the model; `distributed` trains on every rank of
    the group; `mixer` (torchvision's MixUp/CutMix) mixes each batch and its labels. `on_epoch(epoch,
    val_top1)`, called on rank 0 after each epoch is saved, stops the training early by returning True
    (a search's pruner, a time budget); every rank follows its answer.
    """
    distributed = distributed and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    main = rank == 0
    work_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path, metrics_path = work_dir / "last.pt", work_dir / "best.pt", work_dir / "metrics.jsonl"
    loss_fn = loss_fn or cross_entropy_loss(cfg.label_smoothing)
    device = training_device()
    model.to(device)
    extra = extra_modules.to(device) if extra_modules is not None else None
    train = training_split(train, cfg)

    sampler = DistributedSampler(range(len(train)), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    batch_size = math.ceil(cfg.batch_size / world)  # cfg.batch_size is the global batch
    steps_per_epoch = max(1, math.ceil(len(sampler) / batch_size))
    params = list(model.parameters()) + (list(extra.parameters()) if extra is not None else [])
    optimizer = make_optimizer(params, cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    start_epoch, best_acc, best_epoch = 0, -1.0, -1

    if last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        if extra is not None:
            extra.load_state_dict(state["extra"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_acc, best_epoch = state["epoch"], state["best_accuracy"], state["best_epoch"]
        log(f"resuming from epoch {start_epoch}/{cfg.epochs} (best val top-1 {best_acc:.4f})")
        if main:
            _truncate_metrics(metrics_path, start_epoch)

    trained = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    writer = tensorboard_writer(work_dir) if main and start_epoch < cfg.epochs else None

    last_epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        last_epoch = epoch + 1
        started = time.perf_counter()
        # Everything random in an epoch is seeded by (seed, epoch): a resumed run repeats it exactly.
        torch.manual_seed(seed * 100_003 + epoch)
        sampler.set_epoch(epoch)
        trained.train()
        if extra is not None:
            extra.train()
        sums: dict[str, float] = {}
        seen = 0
        bar = ProgressBar(cfg.progress and main, steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", log)
        for x, labels, idx in train.train_loader(list(sampler), batch_size, seed, epoch, device):
            batch = Batch(x, labels, idx)
            if mixer is not None:
                x, soft = mixer(x, labels)
                # a row mixed only from transfer-set inputs has no label mass: it stays unlabelled
                batch = Batch(x, torch.where(soft.sum(1) > 0, soft.argmax(1), NO_LABEL), idx, soft)
            with autocast(cfg, device):
                logits = call_model(trained, x)
                loss, parts = loss_fn(logits, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if distributed and extra is not None:
                _average_gradients(extra)  # connectors live outside DDP's model
            if cfg.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            seen += len(idx)
            for key, value in {"loss": float(loss.detach()), **parts}.items():
                sums[key] = sums.get(key, 0.0) + value * len(idx)
            bar.advance()
        bar.close()
        if distributed:
            sums, seen = _sum_over_ranks(sums, seen, device)
        lr = optimizer.param_groups[0]["lr"]
        if main:
            val_acc = accuracy(model, val)
            if val_acc > best_acc:
                best_acc, best_epoch = val_acc, epoch + 1
                with atomic_path(best_path) as tmp:
                    torch.save(model.state_dict(), tmp)
            record = {"epoch": epoch + 1, **{k: v / max(seen, 1) for k, v in sums.items()},
                      "lr": lr, "val_top1": val_acc, "seconds": round(time.perf_counter() - started, 3)}
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            with atomic_path(last_path) as tmp:
                torch.save({"model": model.state_dict(), "extra": extra.state_dict() if extra is not None else {},
                            "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                            "scaler": scaler.state_dict(), "epoch": epoch + 1, "best_accuracy": best_acc,
                            "best_epoch": best_epoch}, tmp)
            if writer is not None:
                for key, value in record.items():
                    if key != "epoch":
                        writer.add_scalar(f"train/{key}" if key not in ("val_top1", "lr") else key, value, epoch + 1)
                writer.flush()
            log(f"epoch {epoch + 1}/{cfg.epochs}  loss {record['loss']:.4f}  val top-1 {val_acc:.4f}  "
                f"lr {lr:.2e}  ({record['seconds']:.1f}s)")
        stop = [bool(on_epoch(epoch + 1, val_acc)) if main and on_epoch is not None else False]
        if distributed:
            dist.broadcast_object_list(stop, src=0)
        if stop[0]:
            break
    train.close()  # loader workers stop here, not at some later garbage collection
    if writer is not None:
        writer.close()
    if distributed:
        dist.barrier()  # best.pt is written by rank 0
    model.to("cpu")
    model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True))
    model.eval()
    if distributed:
        best = [best_acc, best_epoch]
        dist.broadcast_object_list(best, src=0)
        best_acc, best_epoch = best
    return FitResult(best_acc, best_epoch, last_epoch, start_epoch)


def _average_gradients(module: nn.Module) -> None:
    world = dist.get_world_size()
    for param in module.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= world


def _sum_over_ranks(sums: dict[str, float], seen: int, device: torch.device) -> tuple[dict[str, float], int]:
    keys = sorted(sums)
    totals = torch.tensor([sums[k] for k in keys] + [float(seen)], dtype=torch.float64,
                          device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(totals)
    return {k: float(v) for k, v in zip(keys, totals[:-1])}, int(totals[-1])


def _truncate_metrics(path: Path, epochs: int) -> None:
    """Drop metric lines of epochs after the checkpoint, written before a crash."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["epoch"] <= epochs]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))
