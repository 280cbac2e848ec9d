"""`compress runs` and `compress compare`: headline numbers of saved runs, side by side."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from deploy.runner.harness import within_noise
from compress.core.errors import UsageError
from compress.core.fileio import read_json
from compress.reporting.analysis import analyze
from compress.reporting.collect import collect
from compress.reporting.fmt import ms, num, pct, plus_minus, pts, text_table, times


def ratio(value: float) -> str:
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def run_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder (runs are written to runs/<name> by `compress run`)")
    return sorted((p for p in root.iterdir() if (p / "run.json").is_file()),
                  key=lambda p: (p / "run.json").stat().st_mtime, reverse=True)


def run_state(run_dir: Path) -> str:
    stages = read_json(run_dir / "run.json").get("stages", {})
    statuses = [entry.get("status") for entry in stages.values()]
    for state in ("failed", "running"):
        if state in statuses:
            stage = next(name for name, entry in stages.items() if entry.get("status") == state)
            return f"{state} ({stage})"
    return "done" if statuses else "empty"


def headline_of(run_dir: Path) -> dict[str, Any] | None:
    """The report data of a run (recomputed from saved files), or None when it has no benchmark yet."""
    try:
        return analyze(collect(run_dir))
    except UsageError:
        return None


def list_runs(root: Path) -> str:
    rows = []
    for run_dir in run_dirs(root):
        report = headline_of(run_dir)
        h = (report or {}).get("headline") or {}
        gates = "-" if not report or not report["gates"] else ("pass" if report["gates_passed"] else "FAIL")
        rows.append([run_dir.name, run_state(run_dir), h.get("recommended", "-"), times(h.get("speedup")),
                     pct(h.get("top1")), pts(h.get("top1_delta_pts")), num(h.get("size_mb"), ".3f"),
                     num((h.get("memory") or {}).get("peak_mb"), ".0f"), gates,
                     time.strftime("%Y-%m-%d %H:%M", time.localtime((run_dir / "run.json").stat().st_mtime))])
    if not rows:
        return f"no runs under {root}"
    return text_table(["run", "state", "recommended", "speedup", "top-1", "Δ top-1", "size MB", "memory MB", "gates",
                       "updated"], rows)


def compare_runs(a: Path, b: Path) -> str:
    reports = []
    for run_dir in (a, b):
        if not (run_dir / "run.json").is_file():
            raise UsageError(f"{run_dir}: not a run dir (no run.json)")
        reports.append(analyze(collect(run_dir)))
    ra, rb = reports
    ha, hb = ra["headline"] or {}, rb["headline"] or {}
    label_a, label_b = f"A: {a.name}", f"B: {b.name}"
    fields = [("recommended", lambda h, r: h.get("recommended", "-")),
              ("batch", lambda h, r: h.get("batch_size", "-")),
              ("p50 ms", lambda h, r: ms(h.get("p50_ms"))),
              ("teacher p50 ms", lambda h, r: ms(h.get("teacher_p50_ms"))),
              ("speedup vs teacher", lambda h, r: times(h.get("speedup"))),
              ("top-1", lambda h, r: pct(h.get("top1"))),
              ("teacher top-1", lambda h, r: pct(h.get("teacher_top1"))),
              ("Δ top-1 vs teacher", lambda h, r: pts(h.get("top1_delta_pts"))),
              ("size MB", lambda h, r: num(h.get("size_mb"), ".3f")),
              ("memory MB (alone)", lambda h, r: num((h.get("memory") or {}).get("peak_mb"), ".0f")),
              ("KD gain", lambda h, r: pts((r["kd_gain"] or {}).get("kd_gain_pts"))),
              ("gates", lambda h, r: "-" if not r["gates"] else "pass" if r["gates_passed"] else
               "FAIL: " + ", ".join(g["gate"] for g in r["gates"] if not g["passed"])),
              ("cpu", lambda h, r: r["env"].get("cpu", "-"))]
    headline = text_table(["", label_a, label_b], [[name, get(ha, ra), get(hb, rb)] for name, get in fields])

    def latency(report: dict) -> dict[tuple[str, int], dict]:
        return {(ident, batch): v for ident, by in report["latency_by_batch"].items() for batch, v in by.items()}

    la, lb = latency(ra), latency(rb)
    top1 = [{f"{r['model']}.{r['backend']}.{r['precision']}": r["accuracy"]["top1"] for r in rep["rows"]}
            for rep in reports]
    keys = sorted(set(la) | set(lb), key=lambda k: (k[0], k[1]))

    def p50(side: dict, key: tuple[str, int]) -> str:
        return ms(side[key]["p50"]) + plus_minus(side[key].get("p50_spread")) if key in side else "-"

    per_artifact = text_table(
        ["artifact", "batch", "A p50 ms", "B p50 ms", "B/A", "latency", "A top-1", "B top-1"],
        [[ident, batch, p50(la, (ident, batch)), p50(lb, (ident, batch)),
          ratio(lb[(ident, batch)]["p50"] / la[(ident, batch)]["p50"]) if (ident, batch) in la and (ident, batch) in lb
          else "-", latency_verdict(la.get((ident, batch)), lb.get((ident, batch))),
          pct(top1[0].get(ident)), pct(top1[1].get(ident))] for ident, batch in keys])
    return (f"{headline}\n\n{per_artifact}\n\nlatency: B against A; 'within noise' when the p50s differ by no more "
            "than the larger ± (how far a rerun's p50 may land, 95%)")


def latency_verdict(a: dict | None, b: dict | None) -> str:
    """'within noise' when the p50s differ by no more than either run's repeat spread, else faster/slower."""
    if a is None or b is None:
        return "-"
    agree = within_noise(a, b)
    if agree is None:
        return "no ± recorded"
    if agree:
        return "within noise"
    delta = b["p50"] - a["p50"]
    return f"{'slower' if delta > 0 else 'faster'} by {abs(delta) / a['p50'] * 100:.0f}%"
