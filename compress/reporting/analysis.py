"""From saved facts to what a reader decides on: headline, Pareto front, INT8 cost, KD gain.

The result is plain JSON-ready data (report.json); markdown, HTML and the CLI only format it.
"""

from __future__ import annotations

from typing import Any

from deploy.runner.harness import NOISY_P99, NOISY_SPREAD, NOISY_TAIL
from compress.reporting.collect import RunFacts
from compress.reporting.distillation import kd_gain
from compress.reporting.pruned_student import pruning_section
from compress.reporting.quantization import accuracy_control_section
from compress.reporting.sequence import sequence_section
from compress.reporting.uncertainty import paired, top1_interval
from compress.reporting.verdict import artifact_id, enrich, summary

SAME_ARTIFACT = ("model", "backend", "precision", "batch_size")
QUIET = (f"Every measurement's spread was small (p90 within {NOISY_TAIL:.0%} of p50, p99 within {NOISY_P99:g}x p50, "
         f"± within {NOISY_SPREAD:.0%} of p50).")


STUDENT_NAMES = {"student": "the student with KD", "baseline": "the student trained alone"}
SPLIT_NAMES = {"test": "held-out test", "val": "validation"}


def accuracy_source(results: dict[str, Any]) -> dict[str, Any]:
    """Which split every top-1 of the benchmark comes from, and what that means for reading it."""
    split, samples = results.get("accuracy_split") or "val", results.get("val_samples")
    if split == "test":
        note = (f"Every top-1 of the benchmark (summary, gates, tables, charts) is on the held-out test split "
                f"({samples} samples), which neither trained a model nor chose an epoch; the Training table's best "
                "val top-1 is on the validation split that chose each best epoch.")
    else:
        note = (f"Every top-1 is on the validation split ({samples} samples), the same split that chose each model's "
                "best epoch, so it flatters them a little; set data.test_fraction (or data.test_path) for a held-out "
                "test split.")
    note += " Intervals are 95% (Wilson for one top-1; paired tests on the same images for a difference)."
    return {"split": split, "split_name": SPLIT_NAMES.get(split, split), "samples": samples, "note": note}


def harness_line(settings: dict[str, Any], env: dict[str, Any], val_samples: int | None,
                 split: str = "val") -> str | None:
    """How the numbers were taken, in one sentence a reader can check them against."""
    if not settings:
        return None
    rounds = settings.get("rounds", 1)
    spread = ("± is how far a rerun's p50 may land, 95%: t(R-1)·s·√(2/R) over the rounds' p50, at least the "
              "median's own sampling error" if rounds > 1 else
              "one round: ± is the median's sampling error only and cannot show load-to-load variation")
    return (f"Warm-up ≥ {settings.get('warmup')} runs and ≥ {settings.get('warmup_seconds', '-')} s, then "
            f"≥ {settings.get('runs')} timed runs and ≥ {settings.get('min_seconds')} s per batch size, in "
            f"{rounds} round(s), each a fresh load, interleaved across artifacts; p50, p90, p99 and std are over "
            f"the runs of every round; {spread}. Fresh random inputs (never zeros); {env.get('threads', '-')} "
            f"intra-op threads; accuracy on {val_samples} {SPLIT_NAMES.get(split, split)} samples with the same "
            f"preprocessing for every backend.")


def pareto_front(rows: list[dict]) -> list[str]:
    """Artifacts no other artifact beats on both latency (p50) and top-1 at once, fastest first."""
    front = []
    for row in rows:
        lat, acc = row["latency_ms"]["p50"], row["accuracy"]["top1"]
        dominated = any(o["latency_ms"]["p50"] <= lat and o["accuracy"]["top1"] >= acc
                        and (o["latency_ms"]["p50"] < lat or o["accuracy"]["top1"] > acc) for o in rows)
        if not dominated:
            front.append(row)
    return [artifact_id(r) for r in sorted(front, key=lambda r: r["latency_ms"]["p50"])]


def latency_by_batch(rows: list[dict]) -> dict[str, dict[int, dict[str, float]]]:
    table: dict[str, dict[int, dict[str, float]]] = {}
    for row in rows:
        lat = row["latency_ms"]
        table.setdefault(artifact_id(row), {})[row["batch_size"]] = {
            "p50": lat["p50"], "p50_spread": lat.get("p50_spread"), "p90": lat["p90"], "std": lat.get("std"),
            "throughput_per_s": row["throughput_per_s"]}
    return table


INT8_LARGER = ("the int8 file is larger than its fp32: a Q/DQ ONNX adds quantize/dequantize nodes with their scales "
               "and zero points (and from QAT may keep fp32 weights beside them), which can outweigh the weight bytes "
               "saved; compare memory MB, which is what running it costs")


def int8_vs_fp32(rows: list[dict], batch: int, labels: Any = None) -> list[dict[str, Any]]:
    """Each INT8 artifact against the FP32 artifact of the same model and backend."""
    at_batch = {(r["model"], r["backend"], r["precision"]): r for r in rows if r["batch_size"] == batch}
    pairs = []
    for (model, backend, precision), row in sorted(at_batch.items()):
        if precision != "int8":
            continue
        fp32 = at_batch.get((model, backend, "fp32"))
        if fp32 is None:  # an int8-only model name (e.g. student_int8): compare with the fp32 student there
            fp32 = next((r for (m, b, p), r in at_batch.items() if b == backend and p == "fp32"
                         and m != "teacher"), None)
        if fp32 is None:
            continue
        pairs.append({
            "model": model, "backend": backend, "fp32": artifact_id(fp32), "int8": artifact_id(row),
            "fp32_top1": fp32["accuracy"]["top1"], "int8_top1": row["accuracy"]["top1"],
            "top1_delta_pts": (row["accuracy"]["top1"] - fp32["accuracy"]["top1"]) * 100,
            "agreement_with_teacher": row["accuracy"].get("agreement_with_teacher"),
            "fp32_p50": fp32["latency_ms"]["p50"], "int8_p50": row["latency_ms"]["p50"],
            "speedup": fp32["latency_ms"]["p50"] / row["latency_ms"]["p50"],
            "fp32_size_mb": fp32["size_mb"], "int8_size_mb": row["size_mb"],
            "paired": paired(row.get("predictions"), fp32.get("predictions"), labels),
            "size_note": INT8_LARGER if (row["size_mb"] or 0) > (fp32["size_mb"] or 0) else None,
        })
    return pairs


def training_summary(metrics: dict[str, list[dict]]) -> list[dict[str, Any]]:
    out = []
    for stage, records in metrics.items():
        scored = [r for r in records if r.get("val_top1") is not None]
        best = max(scored, key=lambda r: r["val_top1"]) if scored else None
        out.append({"stage": stage, "epochs": len(records), "best_epoch": best["epoch"] if best else None,
                    "best_val_top1": best["val_top1"] if best else None,
                    "final_loss": records[-1].get("loss") if records else None,
                    "loss_parts": sorted(k for k in records[-1] if k not in
                                         ("epoch", "loss", "lr", "val_top1", "seconds")) if records else [],
                    "seconds": sum(r.get("seconds") or 0 for r in records)})
    return out


def per_class(rows: list[dict], choice: dict | None, class_names: list[str] | None) -> dict[str, Any] | None:
    teacher = next((r for r in rows if r["model"] == "teacher"), None)
    if choice is None or teacher is None or "per_class" not in choice["accuracy"]:
        return None
    keys = sorted(choice["accuracy"]["per_class"], key=int)
    names = [class_names[int(k)] if class_names and int(k) < len(class_names) else str(k) for k in keys]
    teacher_acc = teacher["accuracy"].get("per_class", {})
    return {"classes": names, "teacher": [teacher_acc.get(k) for k in keys],
            "recommended": [choice["accuracy"]["per_class"][k] for k in keys]}


def release_line(release: dict[str, Any] | None) -> str | None:
    """Which release was measured, and whether a rollback has since made another one current."""
    if not release:
        return None
    line = (f"release {release['release']} ({release.get('artifact') or '?'} on {release.get('runtime') or '?'}, "
            f"deployed {release.get('deployed_at') or '?'})")
    if release.get("current") and release["current"] != release["release"]:
        line += f"; rolled back since, current is {release['current']}"
    return line


def device_accuracy_note(rows: list[dict[str, Any]], host_samples: int | None, split: str) -> str | None:
    """How far apart the device's top-1 and the host's may be by sampling alone: they are on different samples."""
    sizes = sorted({r["top1_samples"] for r in rows if r.get("top1_samples")})
    if not sizes:
        return None
    return (f"Top-1 on the device is on the labelled val sample the bundle ships ({', '.join(map(str, sizes))} "
            f"samples), the host's on the {SPLIT_NAMES.get(split, split)} split ({host_samples or '?'} samples): "
            "compare their 95% intervals (Wilson), not the two numbers.")


def device_sections(devices: list[dict], host_rows: list[dict], host_samples: int | None = None,
                    split: str = "val") -> list[dict[str, Any]]:
    """Device rows with the host's p50 and top-1 of the same artifact and batch beside them, when measured here;
    each top-1 with its 95% interval on its own sample size."""
    host = {tuple(r[k] for k in SAME_ARTIFACT): r for r in host_rows}
    sections = []
    for device in devices:
        rows, rail = [], None
        for row in device["rows"]:
            if not isinstance(row, dict):
                continue
            lat = row.get("latency_ms") or {}
            power = row.get("power") if isinstance(row.get("power"), dict) else {}
            mean_mw = power.get("mean_mw")
            match = host.get(tuple(row.get(k) for k in SAME_ARTIFACT))
            accuracy = row.get("accuracy") if isinstance(row.get("accuracy"), dict) else {}
            top1, samples = accuracy.get("top1"), accuracy.get("samples")
            host_top1 = match["accuracy"]["top1"] if match else None
            rows.append({**row, "id": f"{row.get('model', '?')}.{row.get('backend', '?')}.{row.get('precision', '?')}",
                         "p50": lat.get("p50"), "p50_spread": lat.get("p50_spread"), "p90": lat.get("p90"),
                         "std": lat.get("std"),
                         "top1": top1, "top1_samples": samples, "top1_interval": top1_interval(top1, samples),
                         "host_top1": host_top1, "host_top1_interval": top1_interval(host_top1, host_samples),
                         "host_p50": match["latency_ms"]["p50"] if match else None,
                         "power_w": mean_mw / 1000 if isinstance(mean_mw, (int, float)) else None,
                         "energy_mj": row.get("energy_mj_per_sample")})
            if rail is None and rows[-1]["power_w"] is not None:
                rail = power.get("rail")
        info = device["device"] if isinstance(device["device"], dict) else {"info": device["device"]}
        sections.append({"target": device["target"], "device": info, "rows": rows, "path": device.get("path"),
                         "accuracy_note": device_accuracy_note(rows, host_samples, split),
                         "release": release_line(device.get("release")), "power_rail": rail,
                         "power_note": None if rail is None else (
                             f"Power: mean of tegrastats' {rail} rail while the batch ran; energy per sample = "
                             "power × p50 / batch.")})
    return sections


def engine_parity_intro(entries: list[dict[str, Any]], quantized: str | None) -> str:
    """What each engine of the "Engine parity" table is compared with, naming only the cases the run has:
    Q/DQ and the fake-quantized model exist only in a run with a quantize stage."""
    intro = "Each engine against the model it came from, on the same val inputs"
    cases = []
    if quantized and any(e.get("reference") == quantized for e in entries):
        cases.append("int8 built from the Q/DQ ONNX: against the fake-quantized torch model")
    if any(e["engine"].endswith(".int8") and e.get("reference") != quantized for e in entries):
        cases.append("int8 the engine quantized itself: against the float torch model, so the quantization "
                     "error counts")
    return intro + (f" ({'; '.join(cases)})" if cases else "") + "."


def analyze(facts: RunFacts) -> dict[str, Any]:
    """The report as data: every section's numbers, ready for report.json, markdown and HTML."""
    results = facts.results
    samples, labels = results.get("val_samples"), results.get("labels")
    rows = [{**r, "top1_interval": top1_interval(r["accuracy"]["top1"], samples)} for r in enrich(results["rows"])]
    info = summary(results, facts.gates)
    choice = info["recommended_row"]
    batches = sorted({r["batch_size"] for r in rows})
    first_batch = batches[0] if batches else None
    teacher = next((r for r in rows if r["model"] == "teacher" and r["batch_size"] == first_batch), None)
    headline = None
    if choice:
        headline = {
            "recommended": info["recommended"], "artifact": choice["artifact"], "batch_size": choice["batch_size"],
            "model": choice["model"], "within_budget": info["within_budget"],
            "p50_ms": choice["latency_ms"]["p50"], "p50_spread_ms": choice["latency_ms"].get("p50_spread"),
            "teacher_p50_ms": teacher["latency_ms"]["p50"] if teacher else None,
            "speedup": choice.get("speedup_vs_teacher"), "top1": choice["accuracy"]["top1"],
            "teacher_top1": teacher["accuracy"]["top1"] if teacher else None,
            "top1_delta_pts": (choice.get("top1_delta_vs_teacher") or 0.0) * 100 if teacher else None,
            "size_mb": choice["size_mb"], "teacher_size_mb": teacher["size_mb"] if teacher else None,
            "size_reduction": teacher["size_mb"] / choice["size_mb"] if teacher and choice["size_mb"] else None,
            "agreement_with_teacher": choice["accuracy"].get("agreement_with_teacher"),
            "memory": choice.get("memory") if "peak_mb" in (choice.get("memory") or {}) else None,
            "teacher_memory_mb": ((teacher or {}).get("memory") or {}).get("peak_mb"),
            "within_noise": info["within_noise"],
            "student": STUDENT_NAMES.get(choice["model"], choice["model"]),
            "top1_interval": top1_interval(choice["accuracy"]["top1"], samples),
            "teacher_top1_interval": top1_interval(teacher["accuracy"]["top1"], samples) if teacher else None,
            "vs_teacher": paired(choice.get("predictions"), teacher.get("predictions"), labels) if teacher else None,
        }
    noisy = [{"artifact": artifact_id(r), "batch_size": r["batch_size"], "note": r.get("note") or "spread is high"}
             for r in rows if r["latency_ms"].get("noisy")]
    build = facts.outputs.get("build") or {}
    parity = [{"engine": f"{e['model']}.{e['backend']}.{e['precision']}", **e["parity"]}
              for e in build.get("engines") or [] if isinstance(e, dict) and e.get("parity")]
    return {
        "name": facts.name,
        "measured_at": (results.get("env") or {}).get("measured_at"),
        "headline": headline,
        "gates": info["gates"],
        "gates_passed": info["gates_passed"],
        "gate_limits": facts.gates.model_dump(mode="json"),
        "accuracy_budget": info["accuracy_budget"],
        "unrecommended": info["unrecommended"],
        "accuracy": accuracy_source(results),
        "batches": batches,
        "pareto_batch": first_batch,
        "pareto": pareto_front([r for r in rows if r["batch_size"] == first_batch]),
        "rows": [{k: v for k, v in r.items() if k != "predictions"} for r in rows],
        "latency_by_batch": latency_by_batch(rows),
        "sequence": sequence_section(results),
        "accuracy_control": accuracy_control_section(facts.outputs),
        "int8_vs_fp32": int8_vs_fp32(rows, first_batch, labels) if first_batch is not None else [],
        "kd_gain": kd_gain(rows, results, facts.outputs, facts.pipeline, info["recommended"]),
        "pruning": pruning_section(facts.outputs, rows),
        "training": training_summary(facts.metrics),
        "per_class": per_class(rows, choice, results.get("class_names")),
        "deferred": [d for d in build.get("deferred") or [] if isinstance(d, dict)],
        "engine_parity": parity,
        "engine_parity_intro": engine_parity_intro(parity, (facts.outputs.get("quantize") or {}).get("checkpoint")),
        "devices": device_sections(facts.devices, rows, samples, results.get("accuracy_split") or "val"),
        "noisy": noisy,
        "harness": harness_line(results.get("settings") or {}, results.get("env") or {}, samples,
                                results.get("accuracy_split") or "val"),
        "env": results.get("env") or {},
        "settings": results.get("settings") or {},
        "val_samples": results.get("val_samples"),
        "export": {k: v for k, v in (facts.outputs.get("export") or {}).items() if not isinstance(v, (dict, list))},
    }
