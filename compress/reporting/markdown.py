"""report.md: the same sections as the HTML report, as text (charts live in report.html)."""

from __future__ import annotations

from typing import Any

from compress.measuring.footprint import describe
from compress.reporting.analysis import QUIET
from compress.reporting.fmt import count, ms, num, pct, plus_minus, pts, table, times

RESULT_HEADERS = ["model", "backend", "precision", "batch", "p50 ms", "± ms", "p90 ms", "p99 ms", "std ms",
                  "throughput/s", "top-1", "top-5", "agreement", "Δ top-1", "speedup", "params", "MACs",
                  "size MB", "memory MB"]
MEMORY_NOTE = ("memory MB is the peak resident memory of a fresh process that loads only that artifact and its "
               "runtime and runs it at the largest batch (`stages.benchmark.memory`).")


def memory_line(h: dict[str, Any]) -> str | None:
    """The summary's memory line: the recommended artifact alone in a fresh process, against the teacher."""
    if not h.get("memory"):
        return None
    teacher = h.get("teacher_memory_mb")
    return f"Memory: {describe(h['memory'])}" + (f"; the teacher {teacher:.0f} MB" if teacher else "")


def result_cells(r: dict[str, Any]) -> list[str]:
    lat, acc = r["latency_ms"], r["accuracy"]
    delta = r.get("top1_delta_vs_teacher")
    return [r["model"], r["backend"], r["precision"], str(r["batch_size"]), ms(lat["p50"]), ms(lat.get("p50_spread")),
            ms(lat["p90"]),
            ms(lat["p99"]), ms(lat.get("std")) + (" ⚠" if lat.get("noisy") else ""), num(r["throughput_per_s"], ".1f"),
            pct(acc["top1"]), pct(acc.get("top5")), pct(acc.get("agreement_with_teacher")),
            pts(None if delta is None else delta * 100), times(r.get("speedup_vs_teacher")), count(r.get("params")),
            count(r.get("macs")), num(r.get("size_mb"), ".3f"), num((r.get("memory") or {}).get("peak_mb"), ".0f")]


def render_markdown(report: dict[str, Any]) -> str:
    h = report["headline"]
    out = [f"# Deployment report: {report['name']}", "",
           f"Measured {report['measured_at'] or '(time not recorded)'}; rebuilt from saved results by "
           "`compress report RUN_DIR`. Charts: `report.html`.", ""]

    out += ["## Summary", ""]
    if h:
        out += [f"- Recommended artifact: **{h['recommended']}** (`{h['artifact']}`)",
                f"- Speedup vs teacher at batch {h['batch_size']}: **{times(h['speedup'])}** "
                f"({ms(h['p50_ms'])}{plus_minus(h.get('p50_spread_ms'))} ms vs {ms(h['teacher_p50_ms'])} ms p50)",
                f"- Top-1: {pct(h['top1'])} vs teacher {pct(h['teacher_top1'])} "
                f"(**{pts(h['top1_delta_pts'])}**); agreement with the teacher {pct(h['agreement_with_teacher'])}",
                f"- Size: {num(h['size_mb'], '.3f')} MB vs {num(h['teacher_size_mb'], '.3f')} MB "
                f"(**{times(h['size_reduction'])} smaller**)"]
        if memory_line(h):
            out.append(f"- {memory_line(h)}")
        if h.get("within_noise"):
            out.append("- Within noise of it (a rerun could rank these first): " + ", ".join(
                f"`{w['artifact']}` {ms(w['p50'])}{plus_minus(w['p50_spread'])} ms" for w in h["within_noise"]))
    else:
        out.append("- No student artifact was benchmarked: nothing to recommend.")
    if report["gates"]:
        verdict = "all gates pass" if report["gates_passed"] else "**GATES FAILED**: " + ", ".join(
            g["gate"] for g in report["gates"] if not g["passed"])
        out.append(f"- Gates: {verdict}")
    out.append("")

    out += ["## Gates", ""]
    if report["gates"]:
        out += table(["gate", "limit", "value", "result", "detail"],
                     [[g["gate"], g["limit"], num(g["value"], ".4g"), "PASS" if g["passed"] else "**FAIL**",
                       g["detail"]] for g in report["gates"]], "lrrll")
    else:
        out.append("No gates configured (`gates:` in pipeline.yaml).")
    out.append("")

    out += [f"## Latency vs accuracy (batch {report['pareto_batch']})", "",
            "Pareto front (no other artifact is both faster and more accurate), fastest first: "
            + ", ".join(f"`{a}`" for a in report["pareto"]), ""]

    out += ["## Latency per batch size", ""]
    batches = report["batches"]
    out += table(["artifact", *(f"b{b} p50 ms" for b in batches), *(f"b{b} /s" for b in batches)],
                 [[ident, *(ms(by.get(b, {}).get("p50")) for b in batches),
                   *(num(by.get(b, {}).get("throughput_per_s"), ".0f") for b in batches)]
                  for ident, by in report["latency_by_batch"].items()], "l" + "r" * 2 * len(batches))
    out.append("")

    out += ["## All results", ""]
    out += table(RESULT_HEADERS, [result_cells(r) for r in report["rows"]], "llll" + "r" * 15)
    out += ["", "± is how far a rerun's p50 may land (95%); ⚠ marks a noisy measurement (see Measurement notes). "
            "Speedup and Δ top-1 are against the teacher (torch) at the same batch size. " + MEMORY_NOTE, ""]

    if report["int8_vs_fp32"]:
        out += ["## INT8 vs FP32", ""]
        out += table(["backend", "fp32", "int8", "fp32 top-1", "int8 top-1", "Δ top-1", "fp32 p50 ms",
                      "int8 p50 ms", "speedup", "size MB fp32 → int8"],
                     [[p["backend"], p["fp32"], p["int8"], pct(p["fp32_top1"]), pct(p["int8_top1"]),
                       pts(p["top1_delta_pts"]), ms(p["fp32_p50"]), ms(p["int8_p50"]), times(p["speedup"]),
                       f"{num(p['fp32_size_mb'])} → {num(p['int8_size_mb'])}"] for p in report["int8_vs_fp32"]],
                     "lllrrrrrrr")
        out.append("")

    kd = report["kd_gain"]
    if kd:
        out += ["## What distillation bought", ""]
        out += table(["", "top-1", "gap to teacher"],
                     [["teacher", pct(kd["teacher_top1"]), "-"],
                      ["student with KD", pct(kd["student_kd_top1"]), pts(kd["teacher_gap_kd_pts"])],
                      ["student alone (baseline)", pct(kd["student_alone_top1"]), pts(kd["teacher_gap_alone_pts"])]],
                     "lrr")
        closed = f"; it closes {kd['gap_closed'] * 100:.0f}% of the gap to the teacher" \
            if kd.get("gap_closed") is not None else ""
        out += ["", f"KD gain: **{pts(kd['kd_gain_pts'])}** top-1 over the same student trained alone{closed}.", ""]

    if report["training"]:
        out += ["## Training", ""]
        out += table(["stage", "epochs", "best epoch", "best val top-1", "final loss", "loss parts", "seconds"],
                     [[t["stage"], t["epochs"], num(t["best_epoch"], "d"), pct(t["best_val_top1"]),
                       num(t["final_loss"], ".4f"), ", ".join(t["loss_parts"]) or "-", num(t["seconds"], ".1f")]
                      for t in report["training"]], "lrrrrlr")
        out.append("")

    if report["per_class"]:
        pc = report["per_class"]
        out += [f"## Per-class accuracy ({h['recommended'] if h else 'recommended'} vs teacher)", ""]
        out += table(["class", "teacher", "recommended", "Δ"],
                     [[c, pct(t), pct(r), pts(None if t is None or r is None else (r - t) * 100)]
                      for c, t, r in zip(pc["classes"], pc["teacher"], pc["recommended"])], "lrrr")
        out.append("")

    if report["deferred"]:
        out += ["## Deferred builds", "", "These engines will be built on the device at deploy time (engines are tied to the GPU and "
                "TensorRT version that build them), so they are not measured here:", ""]
        out += table(["model", "backend", "precision", "reason", "how"],
                     [[d.get("model", "-"), d.get("backend", "-"), d.get("precision", "-"), d.get("reason", "-"),
                       f"`{d['how']}`" if d.get("how") else "-"] for d in report["deferred"]])
        out.append("")

    if report["devices"]:
        out += ["## Device results", ""]
        for dev in report["devices"]:
            out += [f"### {dev['target']}", ""]
            if dev["release"]:
                out += [dev["release"], ""]
            if dev["device"]:
                out += ["- " + ", ".join(f"{k}: {v}" for k, v in dev["device"].items() if v not in (None, ""))]
                out.append("")
            power = ["power W", "mJ/sample"] if dev["power_rail"] else []
            out += table(["artifact", "batch", "p50 ms", "± ms", "p90 ms", "std ms", "throughput/s", "top-1",
                          "host p50 ms", "peak RSS MB", *power],
                         [[r["id"], r.get("batch_size", "-"), ms(r["p50"]), ms(r.get("p50_spread")), ms(r["p90"]),
                           ms(r["std"]), num(r.get("throughput_per_s"), ".1f"), pct(r["top1"]), ms(r["host_p50"]),
                           num(r.get("peak_rss_mb"), ".0f"),
                           *([num(r["power_w"], ".2f"), num(r["energy_mj"], ".3f")] if power else [])]
                          for r in dev["rows"]], "l" + "r" * (9 + len(power)))
            if power:
                out += ["", dev["power_note"]]
            out.append("")

    out += ["## Measurement notes", ""]
    if report["harness"]:
        out.append(f"- {report['harness']}")
    for n in report["noisy"]:
        out.append(f"- ⚠ {n['artifact']} batch {n['batch_size']}: {n['note']}")
    if not report["noisy"]:
        out.append(f"- {QUIET}")
    out.append("")

    out += ["## Environment", ""]
    out += table(["", "version"], [[k, v] for k, v in report["env"].items() if v is not None])
    out.append("")
    return "\n".join(out)
