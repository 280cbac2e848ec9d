"""report.md: the same sections as the HTML report, as text (charts live in report.html)."""

from __future__ import annotations

from typing import Any

from compress.measuring.footprint import describe
from compress.reporting.analysis import QUIET
from compress.reporting.pruned_student import pruning_markdown
from compress.reporting.quantization import accuracy_control_markdown
from compress.reporting.search_trials import search_markdown
from compress.reporting.sequence import sequence_markdown
from compress.reporting.fmt import count, ms, num, pct, pct_interval, plus_minus, pts, pts_interval, table, times
from compress.reporting.uncertainty import noise_phrase
from compress.reporting.verdict import recommendation_sentence

RESULT_HEADERS = ["model", "backend", "precision", "batch", "p50 ms", "± ms", "p90 ms", "p99 ms", "std ms",
                  "throughput/s", "top-1", "top-1 95% CI", "top-5", "agreement", "Δ top-1", "speedup", "params",
                  "MACs", "size MB", "memory MB"]
# The device's top-1 beside the host's, each with its interval and sample size (analysis.device_sections).
DEVICE_TOP1 = ["top-1", "top-1 95% CI", "samples", "host top-1", "host 95% CI"]
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
            pct(acc["top1"]), pct_interval(r.get("top1_interval")), pct(acc.get("top5")),
            pct(acc.get("agreement_with_teacher")),
            pts(None if delta is None else delta * 100), times(r.get("speedup_vs_teacher")), count(r.get("params")),
            count(r.get("macs")), num(r.get("size_mb"), ".3f"), num((r.get("memory") or {}).get("peak_mb"), ".0f")]


def top1_line(h: dict[str, Any], split: str) -> str:
    """The recommended top-1 and the teacher's, each with its interval, and the paired verdict on their difference."""
    paired = h.get("vs_teacher")
    on = f"; paired, on the {split} split: {noise_phrase(paired)}" if paired else ""
    return (f"Top-1: {pct(h['top1'])} (95% CI {pct_interval(h.get('top1_interval'))}) vs teacher "
            f"{pct(h['teacher_top1'])} ({pct_interval(h.get('teacher_top1_interval'))}) "
            f"(**{pts(h['top1_delta_pts'])}**{on}); agreement with the teacher {pct(h['agreement_with_teacher'])}")


def budget_line(budget: dict[str, Any]) -> str:
    source = ("gates.max_accuracy_drop" if budget["source"] != "default"
              else "the default, as gates.max_accuracy_drop is not set")
    return f"Accuracy budget: at most {budget['limit'] * 100:g} points top-1 below the teacher ({source})"


def kd_section(kd: dict[str, Any]) -> list[str]:
    """What distillation bought: the teacher's own standing first, then KD against the student alone."""
    out = ["## What distillation bought", ""]
    if kd["teacher_note"]:
        out += [f"**First, the teacher.** {kd['teacher_note']}", ""]
    ci = kd["intervals"]
    out += table(["", f"top-1 ({kd['split']})", "95% CI", "Δ top-1 vs teacher", "best epoch"],
                 [["teacher", pct(kd["teacher_top1"]), pct_interval(ci["teacher"]), "-", "-"],
                  ["student with KD", pct(kd["student_kd_top1"]), pct_interval(ci["kd"]),
                   pts(kd["kd_delta_vs_teacher_pts"]), num(kd["student_kd_best_epoch"], "d")],
                  ["student alone (baseline)", pct(kd["student_alone_top1"]), pct_interval(ci["alone"]),
                   pts(kd["alone_delta_vs_teacher_pts"]), num(kd["student_alone_best_epoch"], "d")]], "lrrrr")
    line = kd["headline"]
    out += ["", f"{line['lead']} **{line['value']}**{line['rest']}", ""]
    out += search_lines(kd.get("search"))
    if kd.get("recipe_line"):
        out += [kd["recipe_line"], ""]
    if kd["better_student"]:
        out += [kd["better_student"], ""]
    if kd["try"]:
        out += ["What to try next:", "", *(f"- {idea}" for idea in kd["try"]), ""]
    return out + search_markdown(kd.get("search"))


def search_lines(search: dict[str, Any] | None) -> list[str]:
    """How many configurations each side tried, under the KD verdict that it qualifies (bold when biased)."""
    if not search:
        return []
    bias = f" **{search['bias']}**" if search["bias"] else ""
    return [f"{search['configurations']}{bias}", ""]


def render_markdown(report: dict[str, Any]) -> str:
    h = report["headline"]
    out = [f"# Deployment report: {report['name']}", "",
           f"Measured {report['measured_at'] or '(time not recorded)'}; {report['written_by']}. "
           "Charts: `report.html`.", ""]

    out += ["## Summary", ""]
    if h:
        sentence = recommendation_sentence(h, report["accuracy_budget"],
                                           mark=lambda name: f"**{name}** (`{h['artifact']}`)")
        out += [f"- {sentence}",
                f"- Speedup vs teacher at batch {h['batch_size']}: **{times(h['speedup'])}** "
                f"({ms(h['p50_ms'])}{plus_minus(h.get('p50_spread_ms'))} ms vs {ms(h['teacher_p50_ms'])} ms p50)",
                f"- {top1_line(h, report['accuracy']['split'])}",
                f"- Size: {num(h['size_mb'], '.3f')} MB vs {num(h['teacher_size_mb'], '.3f')} MB "
                f"(**{times(h['size_reduction'])} smaller**)"]
        if memory_line(h):
            out.append(f"- {memory_line(h)}")
        if h.get("within_noise"):
            out.append("- Within noise of it (a rerun could rank these first): " + ", ".join(
                f"`{w['artifact']}` {ms(w['p50'])}{plus_minus(w['p50_spread'])} ms" for w in h["within_noise"]))
    elif report["unrecommended"]:
        out.append(f"- **Nothing recommended**: {report['unrecommended']}.")
    else:
        out.append("- No student artifact was benchmarked: nothing to recommend.")
    out += [f"- {budget_line(report['accuracy_budget'])}", f"- {report['accuracy']['note']}"]
    if report["kd_gain"] and report["kd_gain"]["summary"]:
        out.append(f"- **{report['kd_gain']['summary']}**")
    if report["kd_gain"] and report["kd_gain"].get("search"):
        out.append("- " + search_lines(report["kd_gain"]["search"])[0])
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

    out += sequence_markdown(report.get("sequence"))

    out += ["## All results", ""]
    out += table(RESULT_HEADERS, [result_cells(r) for r in report["rows"]], "llll" + "r" * (len(RESULT_HEADERS) - 4))
    out += ["", "± is how far a rerun's p50 may land (95%); ⚠ marks a noisy measurement (see Measurement notes). "
            "Speedup and Δ top-1 are against the teacher (torch) at the same batch size. " + MEMORY_NOTE, ""]

    if report["int8_vs_fp32"]:
        out += ["## INT8 vs FP32", ""]
        out += table(["backend", "fp32", "int8", "fp32 top-1", "int8 top-1", "Δ top-1", "Δ 95% CI", "fp32 p50 ms",
                      "int8 p50 ms", "speedup", "size MB fp32 → int8"],
                     [[p["backend"], p["fp32"], p["int8"], pct(p["fp32_top1"]), pct(p["int8_top1"]),
                       pts(p["top1_delta_pts"]), pts_interval((p["paired"] or {}).get("interval")), ms(p["fp32_p50"]),
                       ms(p["int8_p50"]), times(p["speedup"]),
                       f"{num(p['fp32_size_mb'])} → {num(p['int8_size_mb'])}" + (" ⚠" if p["size_note"] else "")]
                      for p in report["int8_vs_fp32"]], "lllrrrrrrrr")
        out.append("")
        out += [f"- ⚠ {p['int8']}: {p['size_note']}." for p in report["int8_vs_fp32"] if p["size_note"]]
        out += [f"- {p['int8']} against {p['fp32']}: {noise_phrase(p['paired'])}." for p in report["int8_vs_fp32"]
                if p["paired"]]
        out.append("")

    out += accuracy_control_markdown(report.get("accuracy_control"))

    if report.get("engine_parity"):
        out += ["## Engine parity", "", report["engine_parity_intro"], ""]
        out += table(["engine", "reference", "samples", "top-1 agreement", "max |diff|", "mean |diff|", "needs", "result"],
                     [[e["engine"], f"`{e['reference']}`", e["samples"], pct(e["top1_agreement"]),
                       num(e["max_abs_error"], ".2e"), num(e["mean_abs_error"], ".2e"), pct(e["min_agreement"]),
                       "ok" if e["passed"] else "**BELOW**"] for e in report["engine_parity"]], "llrrrrrl")
        out.append("")

    out += pruning_markdown(report.get("pruning"))

    if report["kd_gain"]:
        out += kd_section(report["kd_gain"])

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
            out += table(["artifact", "batch", "p50 ms", "± ms", "p90 ms", "std ms", "throughput/s", *DEVICE_TOP1,
                          "host p50 ms", "peak RSS MB", *power],
                         [[r["id"], r.get("batch_size", "-"), ms(r["p50"]), ms(r.get("p50_spread")), ms(r["p90"]),
                           ms(r["std"]), num(r.get("throughput_per_s"), ".1f"), pct(r["top1"]),
                           pct_interval(r["top1_interval"]), num(r["top1_samples"], "d"), pct(r["host_top1"]),
                           pct_interval(r["host_top1_interval"]), ms(r["host_p50"]), num(r.get("peak_rss_mb"), ".0f"),
                           *([num(r["power_w"], ".2f"), num(r["energy_mj"], ".3f")] if power else [])]
                          for r in dev["rows"]], "l" + "r" * (8 + len(DEVICE_TOP1) + len(power)))
            if dev["accuracy_note"]:
                out += ["", dev["accuracy_note"]]
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
