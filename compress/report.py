"""Turn results.json into a recommendation, gate verdicts and report.md.

Pure functions over the results contract, so `compress report RUN_DIR` can rebuild a report from
saved results without rerunning anything.
"""

from __future__ import annotations

from typing import Any

from compress.config import GatesConfig


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


def recommend(rows: list[dict], gates: GatesConfig) -> dict | None:
    """Fastest student artifact at the smallest batch whose accuracy drop is within the gate."""
    students = [r for r in enrich(rows) if r["model"] != "teacher"]
    if not students:
        return None
    batch = min(r["batch_size"] for r in students)
    candidates = [r for r in students if r["batch_size"] == batch]
    if gates.max_accuracy_drop is not None:
        within = [r for r in candidates if -r.get("top1_delta_vs_teacher", 0.0) <= gates.max_accuracy_drop + 1e-12]
        candidates = within or candidates
    return min(candidates, key=lambda r: r["latency_ms"]["p50"])


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
            p50 = row["latency_ms"]["p50"]
            verdict(f"max_latency_ms[b{batch}]", limit, p50, p50 <= limit, f"p50 {p50:.3f} ms at batch {batch}")
    if gates.max_size_mb is not None:
        verdict("max_size_mb", gates.max_size_mb, choice["size_mb"], choice["size_mb"] <= gates.max_size_mb,
                f"{choice['size_mb']:.3f} MB on disk")
    return verdicts


def summary(results: dict, gates: GatesConfig) -> dict[str, Any]:
    rows = results["rows"]
    choice = recommend(rows, gates)
    verdicts = evaluate_gates(rows, gates, choice)
    return {
        "recommended": artifact_id(choice) if choice else None,
        "recommended_row": choice,
        "gates": verdicts,
        "gates_passed": all(v["passed"] for v in verdicts),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_markdown(name: str, results: dict, info: dict[str, Any]) -> str:
    rows = enrich(results["rows"])
    choice = info["recommended_row"]
    lines = [f"# Deployment report: {name}", ""]
    if choice:
        lines += [
            "## Summary", "",
            f"- Recommended artifact: **{info['recommended']}** (`{choice['artifact']}`)",
            f"- Speedup vs teacher at batch {choice['batch_size']}: **{_fmt(choice.get('speedup_vs_teacher'), '.2f')}x**",
            f"- Top-1: {choice['accuracy']['top1']:.4f} "
            f"({_fmt((choice.get('top1_delta_vs_teacher') or 0) * 100, '+.2f')} points vs teacher)",
            f"- Size: {choice['size_mb']:.3f} MB ({_fmt(choice.get('size_ratio_vs_teacher'), '.3f')}x the teacher)",
            "",
        ]
    lines += ["## Results", "",
              "| model | backend | precision | batch | p50 ms | p90 ms | p99 ms | throughput/s | top-1 | top-5 "
              "| agreement | Δ top-1 (pts) | speedup | params | MACs | size MB |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lat, acc = r["latency_ms"], r["accuracy"]
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['precision']} | {r['batch_size']} | {lat['p50']:.3f} "
            f"| {lat['p90']:.3f} | {lat['p99']:.3f} | {r['throughput_per_s']:.1f} | {acc['top1']:.4f} "
            f"| {acc['top5']:.4f} | {acc['agreement_with_teacher']:.4f} "
            f"| {_fmt((r.get('top1_delta_vs_teacher') or 0) * 100, '+.2f')} "
            f"| {_fmt(r.get('speedup_vs_teacher'), '.2f')}x | {r['params']:,} | {r['macs']:,} | {r['size_mb']:.3f} |")
    lines.append("")
    if info["gates"]:
        lines += ["## Gates", "", "| gate | limit | value | result |", "|---|---:|---:|---|"]
        for v in info["gates"]:
            value = "-" if v["value"] is None else f"{v['value']:.4g}"
            lines.append(f"| {v['gate']} | {v['limit']} | {value} | {'PASS' if v['passed'] else 'FAIL'}: {v['detail']} |")
        lines.append("")
    env = results.get("env", {})
    lines += ["## Environment", "", ", ".join(f"{k}: {v}" for k, v in env.items() if v is not None), ""]
    return "\n".join(lines)


def render_deferred(build: dict[str, Any]) -> str:
    """Builds left to the device (TensorRT without a GPU here) and Triton repositories written."""
    lines: list[str] = []
    if build.get("deferred"):
        lines += ["## Deferred builds", ""]
        for d in build["deferred"]:
            lines.append(f"- {d['model']} {d['backend']} {d['precision']}: the TensorRT engine will be built on "
                         f"the device at deploy time ({d['reason']}): `{d['how']}`, or `{d['script']}` on the "
                         f"device (`{d['trtexec']}`)")
        lines.append("")
    if build.get("triton"):
        lines += ["## Triton model repository", ""]
        lines += [f"- `{t['dir']}` ({t['precision']}, {t['format']})" for t in build["triton"]]
        lines.append("")
    return "\n".join(lines)


# ---- device section: results of `compress deploy` (stages/deploy/<target>/results.json)


def device_results(run_dir) -> list[dict]:
    import json
    from pathlib import Path

    return [json.loads(p.read_text()) for p in sorted(Path(run_dir).glob("stages/deploy/*/results.json"))]


def render_devices(run_dir) -> str:
    """Markdown for every device deployed to, measured on the device itself by its runner."""
    devices = device_results(run_dir)
    if not devices:
        return ""
    lines = ["", "## On device", ""]
    for result in devices:
        device = result.get("device", {})
        facts = [device.get("model") or device.get("hostname"), device.get("arch")]
        if device.get("l4t"):
            facts.append(f"L4T {device['l4t']} / JetPack {device.get('jetpack') or '?'}")
        if device.get("tensorrt"):
            facts.append(f"TensorRT {device['tensorrt']}")
        if device.get("power_mode"):
            facts.append(f"power mode {device['power_mode'].get('name')}")
        lines += [f"### {result['target']}", "",
                  f"{', '.join(str(f) for f in facts if f)}; release `{result['release']}` "
                  f"({result['artifact']} on {result['runtime']}, deployed {result['deployed_at']})"
                  + (f"; rolled back, current is `{result['current']}`"
                     if result.get("current", result["release"]) != result["release"] else ""), "",
                  "| backend | precision | batch | p50 ms | p90 ms | p99 ms | throughput/s | top-1 | agreement with host "
                  "| power mW | size MB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in result["rows"]:
            lat, acc, power = r["latency_ms"], r.get("accuracy") or {}, r.get("power") or {}
            lines.append(
                f"| {r['backend']} | {r['precision']} | {r['batch_size']} | {_fmt(lat.get('p50'), '.3f')} "
                f"| {_fmt(lat.get('p90'), '.3f')} | {_fmt(lat.get('p99'), '.3f')} | {r['throughput_per_s']:.1f} "
                f"| {_fmt(acc.get('top1'), '.4f')} | {_fmt(acc.get('agreement_with_host'), '.4f')} "
                f"| {_fmt(power.get('mean_mw'), '.0f')} | {r['size_mb']:.3f} |")
        lines.append("")
    return "\n".join(lines)
