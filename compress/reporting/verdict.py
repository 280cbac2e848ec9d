"""Turn results.json into a recommendation and gate verdicts (rendering lives in compress.reporting).

Pure functions over the results contract, so `compress report RUN_DIR` can rebuild a report from
saved results without rerunning anything.
"""

from __future__ import annotations

from typing import Any

from deploy.runner.harness import order_uncertain
from compress.config import GatesConfig
from compress.measuring.footprint import describe
from compress.reporting.fmt import num
from compress.reporting.uncertainty import paired

# Without gates.max_accuracy_drop, the recommendation may lose at most this much top-1 to the teacher.
DEFAULT_ACCURACY_BUDGET = 0.03


def teacher_rows(rows: list[dict]) -> dict[int, dict]:
    return {r["batch_size"]: r for r in rows if r["model"] == "teacher"}


def artifact_id(row: dict) -> str:
    return f"{row['model']}.{row['backend']}.{row['precision']}"


def enrich(rows: list[dict]) -> list[dict]:
    """Add speedup and accuracy delta against the teacher at the same batch size."""
    teachers = teacher_rows(rows)
    out = []
    for row in rows:
        teacher = teachers.get(row["batch_size"])
        row = dict(row)
        if teacher:
            row["speedup_vs_teacher"] = teacher["latency_ms"]["p50"] / row["latency_ms"]["p50"]
            row["top1_delta_vs_teacher"] = row["accuracy"]["top1"] - teacher["accuracy"]["top1"]
            row["size_ratio_vs_teacher"] = row["size_mb"] / teacher["size_mb"] if teacher["size_mb"] else None
        out.append(row)
    return out


def accuracy_budget(gates: GatesConfig) -> dict[str, Any]:
    """The top-1 drop a recommendation may cost: the gate's, or the default one when no gate sets it."""
    if gates.max_accuracy_drop is not None:
        return {"limit": gates.max_accuracy_drop, "source": "gates.max_accuracy_drop"}
    return {"limit": DEFAULT_ACCURACY_BUDGET, "source": "default"}


def better_students(rows: list[dict]) -> list[dict]:
    """On each engine, the more accurate of the students benchmarked there (the KD student on a tie).

    The KD student and the student alone share one architecture, so their speeds differ by noise
    only: latency cannot choose between them, accuracy can.
    """
    best: dict[tuple, dict] = {}
    for row in rows:
        key = (row["backend"], row["precision"], row["batch_size"])
        held = best.get(key)
        if held is None or (row["accuracy"]["top1"], row["model"] == "student") > \
                (held["accuracy"]["top1"], held["model"] == "student"):
            best[key] = row
    kept = {id(r) for r in best.values()}
    return [r for r in rows if id(r) in kept]


def within_budget(row: dict, limit: float) -> bool:
    return -row.get("top1_delta_vs_teacher", 0.0) <= limit + 1e-12


def candidates(rows: list[dict], gates: GatesConfig) -> list[dict]:
    """Student artifacts at the smallest batch within the accuracy budget.

    With gates.max_accuracy_drop and none within it, all of them (the gate then fails and says so);
    with the default budget and none within it, none: nothing is recommended blindly.
    """
    students = better_students([r for r in enrich(rows) if r["model"] != "teacher"])
    if not students:
        return []
    batch = min(r["batch_size"] for r in students)
    at_batch = [r for r in students if r["batch_size"] == batch]
    if not any("top1_delta_vs_teacher" in r for r in at_batch):
        return at_batch  # no teacher measured: nothing to hold the accuracy against
    within = [r for r in at_batch if within_budget(r, accuracy_budget(gates)["limit"])]
    return within or (at_batch if gates.max_accuracy_drop is not None else [])


def unrecommended(rows: list[dict], gates: GatesConfig) -> str | None:
    """Why nothing is recommended although students were benchmarked (the default budget left none)."""
    students = [r for r in enrich(rows) if r["model"] != "teacher" and "top1_delta_vs_teacher" in r]
    if not students or candidates(rows, gates):
        return None
    closest = max(students, key=lambda r: r["top1_delta_vs_teacher"])
    return (f"no student artifact is within the default accuracy budget of {DEFAULT_ACCURACY_BUDGET * 100:g} points "
            f"top-1 below the teacher (gates.max_accuracy_drop is not set): the closest, {artifact_id(closest)}, is "
            f"{-closest['top1_delta_vs_teacher'] * 100:.2f} points down. Improve the student, or set "
            "gates.max_accuracy_drop to the drop you accept")


def choice_within_budget(choice: dict | None, gates: GatesConfig) -> bool | None:
    """Whether the recommended artifact keeps to the accuracy budget; None when no teacher was measured.

    It can be False: with gates.max_accuracy_drop set and no student within it, every student is a
    candidate (so the gates have an artifact to judge and fail on), and the fastest is chosen.
    """
    if choice is None or "top1_delta_vs_teacher" not in choice:
        return None
    return within_budget(choice, accuracy_budget(gates)["limit"])


ALONE = " (the student trained alone: the more accurate student on this engine)"


def recommendation_sentence(headline: dict[str, Any], budget: dict[str, Any], mark=str) -> str:
    """The summary's first sentence, in the same words in report.md, report.html and the console.

    `mark` dresses the artifact's name for each (bold in markdown, <strong> in HTML, plain on the
    console); the words around it are this function's alone, so the three cannot drift apart.
    """
    name = mark(headline["recommended"]) + (ALONE if headline.get("model") == "baseline" else "")
    batch = headline["batch_size"]
    if headline.get("within_budget") is False:
        drop = -(headline.get("top1_delta_pts") or 0.0)
        return (f"No student artifact is within the accuracy budget ({budget['limit'] * 100:g} points top-1 below the "
                f"teacher); the fastest at batch {batch} is {name}, {drop:.2f} points below the teacher: "
                f"{budget['source']} fails on it")
    if headline.get("within_budget") is None:
        return (f"Recommended artifact: {name}: the fastest student artifact at batch {batch}; no teacher was "
                "measured, so no accuracy budget applies")
    return f"Recommended artifact: {name}: the fastest student artifact at batch {batch} within the accuracy budget"


def recommend(rows: list[dict], gates: GatesConfig) -> dict | None:
    """Fastest student artifact at the smallest batch whose accuracy drop is within the gate."""
    return min(candidates(rows, gates), key=lambda r: r["latency_ms"]["p50"], default=None)


def runners_up(rows: list[dict], gates: GatesConfig, choice: dict | None) -> list[dict]:
    """Other candidates too close to the recommended one to tell apart (`order_uncertain`): a rerun could rank
    them first."""
    if choice is None:
        return []
    return sorted((r for r in candidates(rows, gates) if artifact_id(r) != artifact_id(choice)
                   and order_uncertain(r["latency_ms"], choice["latency_ms"])), key=lambda r: r["latency_ms"]["p50"])


def drop_interval(teacher: dict | None, choice: dict, labels: Any) -> dict[str, Any] | None:
    """The teacher against the artifact on the same samples (a paired test), when both kept their predictions."""
    if teacher is None:
        return None
    return paired(teacher.get("predictions"), choice.get("predictions"), labels)


def accuracy_drop_detail(drop: float, limit: float, test: dict[str, Any] | None) -> str:
    """The drop, how far it may move on other samples (paired 95% interval), and whether that crosses the limit."""
    detail = f"top-1 drop vs teacher {num(drop * 100, '.2f')} points"
    if test is None:
        return detail
    low, high = test["interval"]
    detail += f" (95% interval {num(low * 100, '.2f')} to {num(high * 100, '.2f')} on {test['n']} paired samples)"
    if low <= limit <= high:  # the verdict stands on the measured drop; other samples may land across the limit
        detail += "; within noise of the limit: a rerun on other samples may " + ("fail" if drop <= limit else "pass")
    return detail


def evaluate_gates(rows: list[dict], gates: GatesConfig, choice: dict | None,
                   labels: Any = None) -> list[dict[str, Any]]:
    """One verdict per configured gate, judged on the recommended artifact."""
    verdicts: list[dict[str, Any]] = []
    if choice is None:  # nothing is within the accuracy budget: no gate can pass on nothing
        budget = accuracy_budget(gates)["limit"] * 100
        detail = f"no student artifact is within the accuracy budget ({budget:g} pts top-1): nothing to judge"
        return [{"gate": name, "limit": limit, "value": None, "passed": False, "detail": detail}
                for name, limit in gates.model_dump().items() if limit is not None]
    rows = enrich(rows)
    same_artifact = [r for r in rows if artifact_id(r) == artifact_id(choice)]

    def verdict(name: str, limit: Any, value: Any, passed: bool, detail: str) -> None:
        verdicts.append({"gate": name, "limit": limit, "value": value, "passed": bool(passed), "detail": detail})

    if gates.max_accuracy_drop is not None:
        drop = -choice.get("top1_delta_vs_teacher", 0.0)
        verdict("max_accuracy_drop", gates.max_accuracy_drop, drop, drop <= gates.max_accuracy_drop + 1e-12,
                accuracy_drop_detail(drop, gates.max_accuracy_drop,
                                     drop_interval(teacher_rows(rows).get(choice["batch_size"]), choice, labels)))
    if gates.min_speedup is not None:
        speedup = choice.get("speedup_vs_teacher", 0.0)
        verdict("min_speedup", gates.min_speedup, speedup, speedup >= gates.min_speedup,
                f"{speedup:.2f}x faster than the teacher at batch {choice['batch_size']}")
    if gates.max_latency_ms is not None:
        limits = gates.max_latency_ms if isinstance(gates.max_latency_ms, dict) else {
            r["batch_size"]: gates.max_latency_ms for r in same_artifact}
        for batch, limit in sorted(limits.items()):
            row = next((r for r in same_artifact if r["batch_size"] == batch), None)
            if row is None:
                verdict(f"max_latency_ms[b{batch}]", limit, None, False, f"batch {batch} was not benchmarked")
                continue
            p50, spread = row["latency_ms"]["p50"], row["latency_ms"].get("p50_spread")
            detail = f"p50 {p50:.3f}{'' if spread is None else f' ± {spread:.3f}'} ms at batch {batch}"
            if spread is not None and abs(p50 - limit) <= spread:  # the verdict stands on the p50; a rerun may flip it
                detail += "; within noise of the limit: a rerun may " + ("fail" if p50 <= limit else "pass")
            verdict(f"max_latency_ms[b{batch}]", limit, p50, p50 <= limit, detail)
    if gates.max_size_mb is not None:
        verdict("max_size_mb", gates.max_size_mb, choice["size_mb"], choice["size_mb"] <= gates.max_size_mb,
                f"{choice['size_mb']:.3f} MB on disk")
    if gates.min_engine_agreement is not None:
        verdict(*engine_agreement_verdict(choice, gates))
    if gates.max_memory_mb is not None:
        memory = choice.get("memory") or {
            "error": "no memory in the results (stages.benchmark.memory off, or measured before it existed)"}
        peak = memory.get("peak_mb")
        verdict("max_memory_mb", gates.max_memory_mb, peak, peak is not None and peak <= gates.max_memory_mb,
                describe(memory))
    return verdicts


def engine_agreement_verdict(choice: dict, gates: GatesConfig) -> tuple[str, Any, Any, bool, str]:
    """The recommended engine's top-1 agreement with the model it came from (the build stage measured it)."""
    limit = gates.engine_agreement(choice["precision"])
    checked = choice.get("engine_parity")
    if choice["backend"] == "torch":
        return "min_engine_agreement", limit, None, True, "the recommended artifact is the torch model itself"
    if not checked:
        return ("min_engine_agreement", limit, None, False,
                "no engine parity recorded (built before the build stage checked engines): rerun with --force build")
    agreement = checked["top1_agreement"]
    return ("min_engine_agreement", limit, agreement, agreement >= limit,
            f"top-1 agreement with {checked['reference']} on {checked['samples']} val inputs, max |diff| "
            f"{checked['max_abs_error']:.2e}")


def summary(results: dict, gates: GatesConfig) -> dict[str, Any]:
    rows = results["rows"]
    choice = recommend(rows, gates)
    verdicts = evaluate_gates(rows, gates, choice, results.get("labels"))
    return {
        "recommended": artifact_id(choice) if choice else None,
        "recommended_row": choice,
        "within_budget": choice_within_budget(choice, gates),
        "accuracy_budget": accuracy_budget(gates),
        "unrecommended": unrecommended(rows, gates),
        "within_noise": [{"artifact": artifact_id(r), "p50": r["latency_ms"]["p50"],
                          "p50_spread": r["latency_ms"].get("p50_spread")} for r in runners_up(rows, gates, choice)],
        "gates": verdicts,
        "gates_passed": all(v["passed"] for v in verdicts),
    }
