"""Which int8 form of a model is fastest here, within the accuracy budget: measured, never assumed.

Why this exists: on a BERT-shaped model, ONNX Runtime's static Q/DQ int8 (activation scales fixed
at calibration, a QuantizeLinear/DequantizeLinear pair around every MatMul) ran slower than the
fp32 ONNX at short sequences and than `quantize_dynamic` (weights int8, activations quantized per
call by DynamicQuantizeLinear feeding MatMulInteger) at every shape tried (benchmarks/README.md,
text_engines.py), while on CNNs the static form is the fast one (ORT's dynamic Conv is slow). Which
is faster depends on the graph, the shapes and the CPU's int8 instructions (VNNI, AMX), and which is
accurate enough depends on the model, so each candidate is timed on this machine against the fp32
model in interleaved rounds and scored against the fp32 ONNX's outputs, and `choose` takes the
fastest within the budget. Everything measured goes into engine.json, so the choice can be read
and redone by hand.

Backend-neutral: candidates are (name, artifact, description) opened by the caller's `load`; the
ONNX Runtime engine (deploy.engines.onnxruntime) builds its candidates, OpenVINO could do the same.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np

from deploy.runner.harness import ENGINE_AGREEMENT, LatencySettings, has_sequence_axis, predict, time_runs

# Per round and candidate at each batch size: a short warm-up, then at least `runs` and `min_seconds`.
# Rounds interleave the candidates and the fp32 model, and each candidate is judged by its speed relative
# to fp32 within the same round, so a burst of load on a shared machine does not pick the winner.
TIMING = LatencySettings(warmup=2, warmup_seconds=0.05, runs=3, min_seconds=0.1, seed=0)
TIMING_ROUNDS = 5
TIMING_BATCHES = (1, 8)
CHECK_SAMPLES = 256  # rows of the check inputs the candidates are scored on (all of a smaller set)
# Candidates whose speedups are within this fraction of the best are a tie: the earliest listed wins, so the
# plain recipe (listed first by the engine) is displaced only by a clear gain, not by noise.
TIE = 0.03

RoundTimes = dict  # name -> {batch size (str): [p50 ms of each round]}


def geometric_mean(values: Sequence[float]) -> float:
    return float(math.exp(sum(math.log(v) for v in values) / len(values))) if values else float("inf")


def time_candidates(opens: dict[str, Callable[[], Any]], inputs: list[dict[str, Any]], batch_sizes: Sequence[int],
                    sequence_length: int | None, rounds: int = TIMING_ROUNDS,
                    settings: LatencySettings = TIMING) -> RoundTimes:
    """Each session's p50 ms at every batch size in each of `rounds` interleaved rounds.

    `opens[name]()` returns an open session (a context manager with `infer`); each is opened once
    and kept, since what is compared is the kernels, not the load. Inputs are the harness's random
    feeds (token ids with a full mask at `sequence_length` for a Transformer), as the benchmark's.
    """
    sessions = {name: open_() for name, open_ in opens.items()}
    per_round: RoundTimes = {name: {str(b): [] for b in batch_sizes} for name in sessions}
    try:
        for r in range(rounds):
            order = list(sessions) if r % 2 == 0 else list(sessions)[::-1]  # neither side always goes first
            for name in order:
                for batch in batch_sizes:
                    times, _ = time_runs(sessions[name].infer, inputs, batch, replace(settings, seed=settings.seed + r),
                                         sequence_length)
                    per_round[name][str(batch)].append(float(np.median(times)))
    finally:
        for session in sessions.values():
            session.close()
    return per_round


def speedup(reference: dict[str, list[float]], candidate: dict[str, list[float]]) -> float:
    """Median over rounds of (reference / candidate), each round's times averaged geometrically over batch sizes."""
    rounds = len(next(iter(candidate.values())))
    ratios = [geometric_mean([reference[b][r] for b in reference])
              / geometric_mean([candidate[b][r] for b in candidate]) for r in range(rounds)]
    return float(np.median(ratios))


def score_candidates(opens: dict[str, Callable[[], Any]], reference: np.ndarray, check_inputs: Any
                     ) -> dict[str, dict[str, float]]:
    """Top-1 agreement and mean/max |diff| of each candidate's outputs with the fp32 model's on `check_inputs`."""
    scores = {}
    for name, open_ in opens.items():
        with open_() as session:
            outputs = predict(session.infer, check_inputs, 64)
        diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
        scores[name] = {"top1_agreement": float((outputs.argmax(1) == reference.argmax(1)).mean()),
                        "mean_abs_error": float(diff.mean()), "max_abs_error": float(diff.max())}
    return scores


def choose(candidates: dict[str, dict[str, Any]], min_agreement: float, tie: float = TIE) -> tuple[str, str]:
    """(name, why): the candidate with the highest `speedup_vs_fp32` among those whose top-1 agreement with the
    fp32 model reaches `min_agreement` (one within `tie` of the best counts as a tie, and the earliest listed of
    the tied wins); when none reaches the budget, the most faithful one (highest agreement, then lowest mean
    |diff|), said so.
    """
    within = [name for name, c in candidates.items() if c["top1_agreement"] >= min_agreement]
    if not within:
        name = max(candidates, key=lambda n: (candidates[n]["top1_agreement"], -candidates[n]["mean_abs_error"]))
        return name, (f"no candidate reached top-1 agreement {min_agreement:g} with the fp32 model; {name} is the "
                      f"closest ({candidates[name]['top1_agreement']:.4f})")
    best = max(candidates[n]["speedup_vs_fp32"] for n in within)
    name = next(n for n in within if candidates[n]["speedup_vs_fp32"] >= best * (1 - tie))
    others = [f"{other} {candidates[other]['speedup_vs_fp32']:.2f}x" for other in candidates if other != name]
    left_out = [other for other in candidates if other not in within]
    tied = " (the first listed within {:.0%} of the fastest)".format(tie) if best > candidates[name][
        "speedup_vs_fp32"] else ""
    why = (f"fastest within the budget (top-1 agreement >= {min_agreement:g}){tied}: {name} "
           f"{candidates[name]['speedup_vs_fp32']:.2f}x fp32 against {', '.join(others) or 'nothing else'}")
    return name, why + (f"; over the budget: {', '.join(left_out)}" if left_out else "")


def timing_length(inputs: list[dict[str, Any]], calibration: Any) -> int | None:
    """The sequence length candidates are timed at: the calibration rows' (the data's padded length)."""
    if not has_sequence_axis(inputs) or not isinstance(calibration, dict) or not calibration:
        return None
    return int(np.asarray(next(iter(calibration.values()))).shape[1])


def check_rows(check_inputs: Any, limit: int = CHECK_SAMPLES) -> Any:
    """The first `limit` rows of an array or of a dict name -> rows."""
    if isinstance(check_inputs, dict):
        return {name: np.asarray(rows)[:limit] for name, rows in check_inputs.items()}
    return np.asarray(check_inputs)[:limit]


def measure_and_choose(reference: tuple[str, Callable[[], Any]], candidates: list[tuple[str, Callable[[], Any], str]],
                       inputs: list[dict[str, Any]], check_inputs: Any, sequence_length: int | None,
                       min_agreement: float | None = None, batch_sizes: Sequence[int] | None = None,
                       threads: int | None = None, rounds: int = TIMING_ROUNDS,
                       timer: Callable[..., dict[str, dict[str, float]]] | None = None) -> dict[str, Any]:
    """Time the fp32 `reference` and every candidate together, score the candidates against it, choose.

    Returns the record engine.json keeps: chosen, why, the budget, how it was timed, every candidate's
    p50 by batch size (median over rounds), its speedup over fp32 (median over rounds of the ratio within
    a round) and its agreement. `timer` is `time_candidates` unless a test
    injects the numbers.
    """
    min_agreement = ENGINE_AGREEMENT["int8"] if min_agreement is None else float(min_agreement)
    batch_sizes = list(batch_sizes or TIMING_BATCHES)
    ref_name, ref_open = reference
    opens = {ref_name: ref_open, **{name: open_ for name, open_, _ in candidates}}
    timed = (timer or time_candidates)(opens, inputs, batch_sizes, sequence_length, rounds)
    check = check_rows(check_inputs)
    with ref_open() as session:
        expected = predict(session.infer, check, 64)
    scores = score_candidates({name: open_ for name, open_, _ in candidates}, expected, check)
    median_ms = {name: {b: round(float(np.median(times)), 4) for b, times in by_batch.items()}
                 for name, by_batch in timed.items()}
    records = {}
    for name, _, description in candidates:
        records[name] = {"method": description, "p50_ms": median_ms[name],
                         "speedup_vs_fp32": round(speedup(timed[ref_name], timed[name]), 3), **scores[name]}
    name, why = choose(records, min_agreement)
    rows = len(next(iter(check.values()))) if isinstance(check, dict) else len(check)
    return {"chosen": name, "why": why, "min_agreement": min_agreement, "checked_on_samples": rows,
            "timing": {"batch_sizes": batch_sizes, "sequence_length": sequence_length, "threads": threads,
                       "rounds": rounds, "fp32_p50_ms": median_ms[ref_name]},
            "candidates": records}
