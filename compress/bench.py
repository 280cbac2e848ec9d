"""Latency, memory and accuracy measurement shared by every backend.

Every backend (torch, onnxruntime, openvino, tensorrt) is measured through `Session.infer`, so the
numbers in one table come from one harness. Warm-up runs by count and by time, then timed runs
until both `runs` and `min_seconds` are met. Inputs are fresh random data of the right shape
(never zeros, which some kernels shortcut). Only numpy is needed here, so the same code can run
on a device without torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

Infer = Callable[[np.ndarray], np.ndarray]

# Spread above which a measurement is flagged: p90 more than 25% above p50, or p99 more than twice
# p50, means the machine was busy or the clock unsteady, and a small speedup is not to be trusted.
# (Percentiles, not std: one descheduled run among thousands inflates std but says little.)
NOISY_TAIL = 0.25
NOISY_P99 = 2.0
INPUT_POOL = 8


@dataclass
class LatencySettings:
    warmup: int = 5
    warmup_seconds: float = 0.2
    runs: int = 30
    min_seconds: float = 0.5
    seed: int = 0


def random_inputs(input_shape: tuple[int, ...], batch_size: int, seed: int, count: int = INPUT_POOL) -> list[np.ndarray]:
    """Distinct standard-normal batches, cycled through the runs so no backend sees one input twice in a row."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch_size, *input_shape)).astype(np.float32) for _ in range(count)]


def latency_stats(times_ms: list[float] | np.ndarray) -> dict:
    ms = np.asarray(times_ms, dtype=np.float64)
    p50 = float(np.percentile(ms, 50))
    stats = {
        "mean": float(ms.mean()), "std": float(ms.std()), "min": float(ms.min()), "max": float(ms.max()),
        "p50": p50, "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)),
        "iqr": float(np.percentile(ms, 75) - np.percentile(ms, 25)), "runs": int(len(ms)),
    }
    tail = (stats["p90"] - p50) / p50 if p50 > 0 else 0.0
    stats["noisy"] = bool(tail > NOISY_TAIL or stats["p99"] > NOISY_P99 * p50)
    return stats


def noise_note(stats: dict) -> str | None:
    """One line for the report when the spread says the machine was not quiet."""
    if not stats.get("noisy"):
        return None
    return (f"p90 is {(stats['p90'] / stats['p50'] - 1) * 100:.0f}% above p50 and p99 is "
            f"{stats['p99'] / stats['p50']:.1f}x p50: the machine was busy; "
            f"compare medians and rerun before trusting small differences")


def measure_latency(infer: Infer, input_shape: tuple[int, ...], batch_size: int,
                    settings: LatencySettings = LatencySettings()) -> dict:
    """Warm up (count and time), then time `infer` until both `runs` and `min_seconds` are reached."""
    pool = random_inputs(tuple(input_shape), batch_size, settings.seed + batch_size)
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
    stats = latency_stats(times)
    return {"latency_ms": stats, "throughput_per_s": batch_size * 1000.0 / stats["p50"], "warmup_runs": count}


# --- memory ---------------------------------------------------------------------------------------

def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of resident memory (Linux), so the next peak is per artifact."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process since start or the last reset, in MB."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    return round(kb / 1024.0, 1)


# --- accuracy --------------------------------------------------------------------------------------

def predict(infer: Infer, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([np.asarray(infer(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])


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


# --- one artifact, every measurement ---------------------------------------------------------------

def combine_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Rows of several rounds (each a fresh load of the artifact) -> one row per batch size.

    A loaded model's speed varies a little from load to load (memory placement, thread pinning),
    which the within-run std cannot show. Each row keeps the round with the median p50 and adds
    every round's p50 and their range (`round_spread`), the spread a rerun is expected to see.
    """
    combined = []
    for per_batch in zip(*rounds):
        ordered = sorted(per_batch, key=lambda row: row["latency_ms"]["p50"])
        row = dict(ordered[(len(ordered) - 1) // 2])
        p50s = [r["latency_ms"]["p50"] for r in per_batch]
        row["latency_ms"] = {**row["latency_ms"], "round_p50s": p50s, "round_spread": max(p50s) - min(p50s)}
        row["rounds"] = len(per_batch)
        combined.append(row)
    return combined


def benchmark_session(infer: Infer, input_shape: tuple[int, ...], batch_sizes: list[int],
                      settings: LatencySettings = LatencySettings()) -> list[dict]:
    """Latency and throughput rows (one per batch size) of an open session, with the peak memory seen."""
    rows = []
    for batch in batch_sizes:
        timing = measure_latency(infer, input_shape, batch, settings)
        note = noise_note(timing["latency_ms"])
        rows.append({"batch_size": batch, **timing, "peak_rss_mb": peak_rss_mb(), **({"note": note} if note else {})})
    return rows
