"""Latency, memory and accuracy measurement shared by every backend.

Every backend (torch, onnxruntime, openvino, tensorrt) is measured through `Session.infer`, so the
numbers in one table come from one harness. Warm-up runs by count and by time, then timed runs
until both `runs` and `min_seconds` are met, in several rounds, each a fresh load, interleaved
across artifacts; the spread reported with a p50 is how far a rerun's p50 may land (95%), taken
from the rounds. Inputs are fresh random data of the right shape (never zeros, which some kernels
shortcut): a float32 batch of `input_shape`, or, from a list of input specs (plain dicts, as
`deploy.engines.interface.onnx_inputs` reads them from a graph), one dict name -> array per run
with token ids, an all-ones attention mask and zero token types at the given sequence length.
Only numpy is needed here, so the same code can run on a device without torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Union

import numpy as np

Batch = Union[np.ndarray, Dict[str, np.ndarray]]
Infer = Callable[[Batch], np.ndarray]
# An input spec: {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"], "vocab_size": 4000}.
InputSpecs = List[Dict[str, Any]]

# Spread above which a measurement is flagged: p90 more than 25% above p50, or p99 more than twice
# p50, means the machine was busy or the clock unsteady, and a small speedup is not to be trusted.
# (Percentiles, not std: one descheduled run among thousands inflates std but says little.) A p50
# whose repeat spread is over 10% of itself is flagged too: a rerun may well rank artifacts otherwise.
NOISY_TAIL = 0.25
NOISY_P99 = 2.0
NOISY_SPREAD = 0.10
INPUT_POOL = 8
# Names a dynamic axis other than the batch may have to take the sequence length.
SEQUENCE_AXES = ("sequence", "seq", "sequence_length", "seq_len")
DEFAULT_VOCAB_SIZE = 1000
# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; 1.96 beyond.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
       2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
       2.045, 2.042)


@dataclass
class LatencySettings:
    """Per round: warm-up (count and time), then timed runs until both `runs` and `min_seconds` are met."""

    warmup: int = 5
    warmup_seconds: float = 0.2
    runs: int = 30
    min_seconds: float = 0.5
    seed: int = 0


def random_inputs(input_shape: tuple[int, ...], batch_size: int, seed: int, count: int = INPUT_POOL) -> list[np.ndarray]:
    """Distinct standard-normal batches, cycled through the runs so no backend sees one input twice in a row."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch_size, *input_shape)).astype(np.float32) for _ in range(count)]


def is_input_specs(inputs: Any) -> bool:
    """Whether `inputs` is a list of input specs (dicts) rather than a per-sample shape tuple."""
    return isinstance(inputs, (list, tuple)) and bool(inputs) and all(isinstance(i, dict) for i in inputs)


def spec_shape(spec: dict, batch_size: int, sequence_length: int | None = None) -> tuple[int, ...]:
    """The concrete shape of one input: axis 0 (or a dim named 'batch') is the batch, a sequence axis the length."""
    shape = []
    for axis, dim in enumerate(spec["shape"]):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        elif axis == 0 or dim == "batch":
            shape.append(batch_size)
        elif dim in SEQUENCE_AXES:
            if sequence_length is None:
                raise ValueError(f"input '{spec['name']}' has a '{dim}' axis: give a sequence length")
            shape.append(int(sequence_length))
        else:
            raise ValueError(f"input '{spec['name']}' axis {axis} is dynamic ('{dim}'), neither the batch nor "
                             f"a sequence ({', '.join(SEQUENCE_AXES)}): no size to time it at")
    return tuple(shape)


def spec_values(spec: dict, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random data a model of this input accepts: float noise, token ids below the vocabulary, a full mask."""
    dtype = np.dtype(spec.get("dtype", "float32"))
    name = spec["name"]
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if name.endswith("mask"):
        return np.ones(shape, dtype)
    if name != "token_type_ids" and (name == "input_ids" or spec.get("vocab_size")):
        vocab = int(spec.get("vocab_size") or DEFAULT_VOCAB_SIZE)
        return rng.integers(1, max(vocab, 2), size=shape).astype(dtype)
    return np.zeros(shape, dtype)  # token_type_ids and any other integer input: the first segment


def random_feeds(input_specs: InputSpecs, batch_size: int, seed: int, count: int = INPUT_POOL,
                 sequence_length: int | None = None) -> list[dict[str, np.ndarray]]:
    """Distinct feed dicts for a multi-input model (see `spec_values`), cycled through the runs."""
    rng = np.random.default_rng(seed)
    shapes = [(spec, spec_shape(spec, batch_size, sequence_length)) for spec in input_specs]
    return [{spec["name"]: spec_values(spec, shape, rng) for spec, shape in shapes} for _ in range(count)]


def input_pool(inputs: tuple[int, ...] | InputSpecs, batch_size: int, seed: int, count: int = INPUT_POOL,
               sequence_length: int | None = None) -> list[Batch]:
    """`random_feeds` for input specs, `random_inputs` for a per-sample shape."""
    if is_input_specs(inputs):
        return random_feeds(list(inputs), batch_size, seed, count, sequence_length)
    return random_inputs(tuple(inputs), batch_size, seed, count)


def has_sequence_axis(inputs: Any) -> bool:
    """Whether input specs have a sequence axis (a Transformer's inputs), beyond the batch."""
    return is_input_specs(inputs) and any(dim in SEQUENCE_AXES for spec in inputs for dim in spec.get("shape", [])[1:])


def tokens_per_second(batch_size: int, sequence_length: int, p50_ms: float) -> float:
    """Tokens a second at the median latency: every position of every sequence in the batch counts."""
    return batch_size * sequence_length * 1000.0 / p50_ms if p50_ms > 0 else 0.0


def time_runs(infer: Infer, input_shape: tuple[int, ...] | InputSpecs, batch_size: int,
              settings: LatencySettings = LatencySettings(),
              sequence_length: int | None = None) -> tuple[list[float], int]:
    """Warm up (count and time), then time `infer` until both `runs` and `min_seconds` are reached.

    `input_shape` is a per-sample shape (a float32 batch is made) or a list of input specs (feed
    dicts at `sequence_length`). Returns the timed runs in ms and the number of warm-up runs.
    """
    pool = input_pool(input_shape, batch_size, settings.seed + batch_size, sequence_length=sequence_length)
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
    return times, count


def median_halfwidth(times_ms: np.ndarray) -> float:
    """Half-width of the distribution-free 95% confidence interval of the median (order statistics)."""
    ordered = np.sort(np.asarray(times_ms, dtype=np.float64))
    n = len(ordered)
    if n < 2:
        return 0.0
    reach = 1.96 * np.sqrt(n) / 2
    low = ordered[max(int(np.floor(n / 2 - reach)), 0)]
    high = ordered[min(int(np.ceil(n / 2 + reach)), n - 1)]
    return float(high - low) / 2


def repeat_spread(round_times: list[list[float]]) -> float:
    """How far (95%) a rerun's p50 may land from this benchmark's: the half-width of the interval for
    the difference of two benchmarks of R rounds each.

    Between rounds, each a fresh load of the artifact at another moment, the p50 moves by more than
    the runs within one round show (memory placement, thread pinning, the host's other tenants); the
    rounds' p50 estimate that variance: t(R-1) * s * sqrt(2/R). One round cannot see it, so with R=1
    (and as a floor) it is the sampling error of the pooled median alone, times sqrt(2).
    """
    pooled = np.concatenate([np.asarray(t, dtype=np.float64) for t in round_times])
    return _spread(np.array([np.percentile(t, 50) for t in round_times]), pooled)


def _spread(p50s: np.ndarray, pooled: np.ndarray) -> float:
    """`repeat_spread` from the rounds' p50 and every round's runs pooled."""
    floor = np.sqrt(2) * median_halfwidth(pooled)
    rounds = len(p50s)
    if rounds < 2:
        return float(floor)
    t95 = T95[rounds - 2] if rounds - 1 <= len(T95) else 1.96
    return float(max(t95 * p50s.std(ddof=1) * np.sqrt(2 / rounds), floor))


def within_noise(a: dict, b: dict) -> bool | None:
    """Whether two benchmarks' p50 differ by no more than the larger repeat spread either reports.

    `a` and `b` are `latency_ms` records (or anything with p50 and p50_spread); None when neither
    records a spread (results written before the spread existed).
    """
    spreads = [s for s in (a.get("p50_spread"), b.get("p50_spread")) if s is not None]
    if not spreads:
        return None
    return abs(a["p50"] - b["p50"]) <= max(spreads)


def order_uncertain(a: dict, b: dict) -> bool | None:
    """Whether two artifacts timed in the same benchmark are too close to say which is faster.

    Each ± is for a rerun of its own artifact (the difference of two benchmarks of it, see
    `repeat_spread`); the difference of two artifacts within one benchmark has the two errors once
    each, so its 95% interval is √((±a² + ±b²) / 2). Tighter than `within_noise`'s larger ±: a very
    noisy slow artifact is not called a match for a fast, steady one. None without spreads.
    """
    if a.get("p50_spread") is None or b.get("p50_spread") is None:
        return None
    return abs(a["p50"] - b["p50"]) <= float(np.sqrt((a["p50_spread"] ** 2 + b["p50_spread"] ** 2) / 2))


def tail_is_wide(stats: dict) -> bool:
    """p90 more than NOISY_TAIL above p50, or p99 more than NOISY_P99 times p50: the machine was busy."""
    p50 = stats["p50"]
    return p50 > 0 and ((stats["p90"] - p50) / p50 > NOISY_TAIL or stats["p99"] > NOISY_P99 * p50)


def spread_is_wide(stats: dict) -> bool:
    """The p50's ± over NOISY_SPREAD of itself: a rerun may well rank artifacts otherwise."""
    spread = stats.get("p50_spread")
    return spread is not None and spread > NOISY_SPREAD * stats["p50"]


def latency_stats(times_ms: list[float] | np.ndarray) -> dict:
    ms = np.asarray(times_ms, dtype=np.float64)
    p50 = float(np.percentile(ms, 50))
    stats = {
        "mean": float(ms.mean()), "std": float(ms.std()), "min": float(ms.min()), "max": float(ms.max()),
        "p50": p50, "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)),
        "iqr": float(np.percentile(ms, 75) - np.percentile(ms, 25)), "runs": int(len(ms)),
    }
    stats["noisy"] = tail_is_wide(stats)
    return stats


def round_stats(round_times: list[list[float]]) -> dict:
    """Statistics over the timed runs of every round pooled, with each round's p50 and the repeat spread."""
    pooled = np.concatenate([np.asarray(t, dtype=np.float64) for t in round_times])
    p50s = np.array([np.percentile(t, 50) for t in round_times])
    stats = latency_stats(pooled)
    stats["round_p50s"] = [float(p) for p in p50s]
    stats["p50_spread"] = _spread(p50s, pooled)
    stats["noisy"] = stats["noisy"] or spread_is_wide(stats)
    return stats


def noise_note(stats: dict) -> str | None:
    """One line for the report when the spread says the machine was not quiet."""
    if not stats.get("noisy"):
        return None
    p50 = stats["p50"]
    notes = []
    if tail_is_wide(stats):
        notes.append(f"p90 is {(stats['p90'] / p50 - 1) * 100:.0f}% above p50 and p99 is "
                     f"{stats['p99'] / p50:.1f}x p50: the machine was busy")
    if spread_is_wide(stats):
        rounds = stats.get("round_p50s") or []
        ranged = f" (the rounds' p50 ranged {min(rounds):.3g} to {max(rounds):.3g} ms)" if len(rounds) > 1 else ""
        notes.append(f"a rerun may land up to ±{stats['p50_spread'] / p50 * 100:.0f}% away{ranged}")
    return "; ".join(notes) + "; compare medians and rerun before trusting small differences"


def latency_row(batch_size: int, round_times: list[list[float]], warmup_runs: int,
                sequence_length: int | None = None) -> dict:
    """One results row; with a sequence length, also that length and tokens a second at the p50."""
    stats = round_stats(round_times)
    row = {"batch_size": batch_size, "latency_ms": stats, "throughput_per_s": batch_size * 1000.0 / stats["p50"],
           "warmup_runs": warmup_runs, "rounds": len(round_times)}
    if sequence_length is not None:
        row["sequence_length"] = int(sequence_length)
        row["tokens_per_s"] = tokens_per_second(batch_size, sequence_length, stats["p50"])
    note = noise_note(stats)
    return {**row, "note": note} if note else row


def measure_latency(infer: Infer, input_shape: tuple[int, ...] | InputSpecs, batch_size: int,
                    settings: LatencySettings = LatencySettings(), sequence_length: int | None = None) -> dict:
    """One round at one batch size of an open session (no load-to-load variation: see measure_rounds)."""
    times, warmups = time_runs(infer, input_shape, batch_size, settings, sequence_length)
    return latency_row(batch_size, [times], warmups, _row_length(input_shape, sequence_length))


def _row_length(inputs: Any, sequence_length: int | None) -> int | None:
    """The sequence length a row reports: only where an input has a sequence axis."""
    return sequence_length if sequence_length is not None and has_sequence_axis(inputs) else None


# --- memory ---------------------------------------------------------------------------------------

# An engine below this top-1 agreement with the model it came from (on the host) or with the host's predictions
# (on a device) does not compute what was measured; bf16 keeps 8 bits of mantissa. gates.min_engine_agreement
# overrides them.
ENGINE_AGREEMENT = {"int8": 0.99, "bf16": 0.99, "fp32": 0.999, "fp16": 0.999}


def engine_agreement(gate, precision: str) -> float:
    """The agreement an engine of `precision` must reach: the gate (a fraction, or {precision: fraction}) or the table."""
    if isinstance(gate, dict):
        return gate.get(precision, ENGINE_AGREEMENT.get(precision, 0.99))
    return gate if gate is not None else ENGINE_AGREEMENT.get(precision, 0.99)


# The CPU features that decide which precision is fast: VNNI and AMX-INT8 for int8, AVX512-BF16 and AMX-BF16
# for bf16, AVX512-FP16 for fp16 arithmetic (without it OpenVINO serves an f16 request in bf16 or f32).
PRECISION_FEATURES = ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
                      "amx_int8", "amx_fp16")


def cpu_features() -> list:
    """Which of PRECISION_FEATURES this CPU has (/proc/cpuinfo flags; [] where there is none)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in PRECISION_FEATURES if f in flags]
    except OSError:
        pass
    return []


def proc_status_kb(field: str) -> int | None:
    """A field of /proc/self/status in kB (VmRSS, VmHWM); None where the system has no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of resident memory (Linux).

    Only for a process that exists to measure one thing (compress/measuring/footprint.py's child):
    the reset also erases the process's earlier peak for every outside observer (`/usr/bin/time -v`,
    a job scheduler's accounting), so the benchmark and the device runner never call it.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (since start, or a reset), in MB."""
    kb = proc_status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    return round(kb / 1024.0, 1)


# --- accuracy --------------------------------------------------------------------------------------

def predict(infer: Infer, x: Batch, batch_size: int = 64) -> np.ndarray:
    """Logits of every row of `x` (an array, or a dict name -> array of equal row counts), in batches."""
    if not isinstance(x, dict):
        return np.concatenate([np.asarray(infer(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])
    rows = {name: len(value) for name, value in x.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"inputs have different row counts: {rows}")
    total = next(iter(rows.values()))
    return np.concatenate([np.asarray(infer({name: value[i:i + batch_size] for name, value in x.items()}))
                           for i in range(0, total, batch_size)])


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


# --- every artifact, in rounds --------------------------------------------------------------------

def measure_rounds(openers: Sequence[Callable[[], Any]], input_shape: tuple[int, ...] | InputSpecs,
                   batch_sizes: list[int], settings: LatencySettings = LatencySettings(), rounds: int = 3,
                   on_first_load: Callable[[int, Any], None] | None = None,
                   on_round: Callable[[int], None] | None = None,
                   sequence_length: int | None = None) -> list[list[dict]]:
    """Time every artifact in `rounds` interleaved rounds, loading it afresh for each round.

    `openers[i]()` loads artifact i and returns a session (a context manager with `infer`). Round r
    times artifact 1, 2, ..., n at every batch size, then round r+1 starts again at 1, so each
    artifact's rounds are spread over the whole benchmark: they see load-to-load variation and the
    machine's slow drift (which the runs of one round cannot show, see `repeat_spread`), and every
    artifact meets the same drift, which keeps their ratios fair. `on_first_load(i, session)` runs
    once per artifact, right after its first load (accuracy, say). Returns, per artifact, one row
    per batch size: statistics over all rounds' runs, each round's p50, the repeat spread and
    `peak_rss_mb`, the process's peak resident memory once that batch size was timed. The peak is
    never reset here: what one artifact needs alone is the fresh-process footprint's to measure.
    `input_shape` may be a list of input specs (see `time_runs`); rows then carry `tokens_per_s`.
    """
    timed = [[[] for _ in batch_sizes] for _ in openers]
    warmups = [[0] * len(batch_sizes) for _ in openers]
    peaks = [[0.0] * len(batch_sizes) for _ in openers]
    for r in range(rounds):
        round_settings = replace(settings, seed=settings.seed + 1000 * r)
        for i, open_ in enumerate(openers):
            with open_() as session:
                if r == 0 and on_first_load is not None:
                    on_first_load(i, session)
                for j, batch in enumerate(batch_sizes):
                    times, warm = time_runs(session.infer, input_shape, batch, round_settings, sequence_length)
                    timed[i][j].append(times)
                    warmups[i][j] += warm
                    peaks[i][j] = max(peaks[i][j], peak_rss_mb())
        if on_round is not None:
            on_round(r)
    length = _row_length(input_shape, sequence_length)
    return [[{**latency_row(batch, timed[i][j], warmups[i][j], length), "peak_rss_mb": peaks[i][j]}
             for j, batch in enumerate(batch_sizes)] for i in range(len(openers))]
