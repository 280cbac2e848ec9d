"""Latency and accuracy measurement shared by every backend.

Warm-up runs by count and by time, then timed runs until both `runs` and `min_seconds` are met.
Inputs are fresh random data of the right shape (never zeros, which some kernels shortcut).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

Infer = Callable[[np.ndarray], np.ndarray]


@dataclass
class LatencySettings:
    warmup: int = 5
    warmup_seconds: float = 0.2
    runs: int = 30
    min_seconds: float = 0.5
    seed: int = 0


def measure_latency(infer: Infer, input_shape: tuple[int, ...], batch_size: int,
                    settings: LatencySettings = LatencySettings()) -> dict:
    rng = np.random.default_rng(settings.seed)
    pool = [rng.standard_normal((batch_size, *input_shape)).astype(np.float32) for _ in range(4)]
    started = time.perf_counter()
    count = 0
    while count < settings.warmup or time.perf_counter() - started < settings.warmup_seconds:
        infer(pool[count % len(pool)])
        count += 1
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < settings.runs or time.perf_counter() - started < settings.min_seconds:
        x = pool[len(times) % len(pool)]
        t0 = time.perf_counter()
        infer(x)
        times.append((time.perf_counter() - t0) * 1000.0)
    ms = np.asarray(times)
    stats = {
        "mean": float(ms.mean()), "std": float(ms.std()), "min": float(ms.min()),
        "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)),
        "runs": int(len(ms)),
    }
    return {"latency_ms": stats, "throughput_per_s": batch_size * 1000.0 / stats["p50"]}


def predict(infer: Infer, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([infer(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def accuracy_report(logits: np.ndarray, labels: np.ndarray, teacher_top1: np.ndarray | None) -> dict:
    predicted = logits.argmax(1)
    per_class = {int(c): float((predicted[labels == c] == c).mean()) for c in np.unique(labels)}
    return {
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "agreement_with_teacher": float((predicted == teacher_top1).mean()) if teacher_top1 is not None else 1.0,
        "per_class": per_class,
    }
