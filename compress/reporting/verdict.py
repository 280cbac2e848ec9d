"""Turn results.json into a recommendation and gate verdicts (rendering lives in compress.reporting).

Pure functions over the results contract, so `compress report RUN_DIR` can rebuild a report from
saved results without rerunning anything.
"""

from __future__ import annotations

from typing import Any

from deploy.runner.harness import order_uncertain
from compress.config import GatesConfig
from compress.measuring.footprint import describe


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


def candidates(rows: list[dict], gates: GatesConfig) -> list[dict]:
    """Student artifacts at the smallest batch, those within the accuracy gate when any are."""
    students = [r for r in enrich(rows) if r["model"] != "teacher"]
    if not students:
        return []
    batch = min(r["batch_size"] for r in students)
    at_batch = [r for r in students if r["batch_size"] == batch]
    if gates.max_accuracy_drop is not None:
        within = [r for r in at_batch if -r.get("top1_delta_vs_teacher", 0.0) <= gates.max_accuracy_drop + 1e-12]
        at_batch = within or at_batch
    return at_batch


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


def evaluate_gates(rows: list[dict], gates: GatesConfig, choice: dict | None) -> list[dict[str, Any]]:
    """One verdict per configured gate, judged on the recommended artifact."""
    verdicts: list[dict[str, Any]] = []
    if choice is None:
        return verdicts
    rows = enrich(rows)
    same_artifact = [r for r in rows if artifact_id(r) == artifact_id(choice)]

    def verdict(name: str, limit: Any, value: Any, passed: bool, detail: str) -> None:
        verdicts.append({"gate": name, "limit": limit, "value": value, "passed": bool(passed), "detail": detail})

    if gates.max_accuracy_drop is not None:
        drop = -choice.get("top1_delta_vs_teacher", 0.0)
        verdict("max_accuracy_drop", gates.max_accuracy_drop, drop, drop <= gates.max_accuracy_drop + 1e-12,
                f"top-1 drop vs teacher {drop * 100:.2f} points")
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
    if gates.max_memory_mb is not None:
        memory = choice.get("memory") or {
            "error": "no memory in the results (stages.benchmark.memory off, or measured before it existed)"}
        peak = memory.get("peak_mb")
        verdict("max_memory_mb", gates.max_memory_mb, peak, peak is not None and peak <= gates.max_memory_mb,
                describe(memory))
    return verdicts


def summary(results: dict, gates: GatesConfig) -> dict[str, Any]:
    rows = results["rows"]
    choice = recommend(rows, gates)
    verdicts = evaluate_gates(rows, gates, choice)
    return {
        "recommended": artifact_id(choice) if choice else None,
        "recommended_row": choice,
        "within_noise": [{"artifact": artifact_id(r), "p50": r["latency_ms"]["p50"],
                          "p50_spread": r["latency_ms"].get("p50_spread")} for r in runners_up(rows, gates, choice)],
        "gates": verdicts,
        "gates_passed": all(v["passed"] for v in verdicts),
    }
