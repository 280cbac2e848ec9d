"""A student pruned from the teacher: the architecture it kept, what that saved, what it cost in accuracy.

Read from the prune stage's outputs (channels per layer, MACs, params, top-1 after each round
before any KD) beside distill's (after KD) and baseline's (the same pruned weights trained
alone), and the benchmark's torch rows of teacher and student: MACs that fall without the latency
falling with them are said so, since a pruned layer that no backend runs faster saves nothing.
"""

from __future__ import annotations

from typing import Any

from compress.reporting.fmt import count, ms, pct, pts, table

# Latency that falls to less than this share of what the MACs fell by is reported as MACs without time.
TIME_FOLLOWS_MACS = 0.5


def _torch_latency(rows: list[dict], macs_ratio: float) -> list[dict[str, Any]]:
    """Student vs teacher p50 in PyTorch at each batch size both were timed at."""
    at = {(r["model"], r["batch_size"]): r for r in rows if r["backend"] == "torch" and r["precision"] == "fp32"}
    out = []
    for (model, batch), row in sorted(at.items(), key=lambda item: item[0][1]):
        teacher = at.get(("teacher", batch))
        if model != "student" or teacher is None:
            continue
        ratio = row["latency_ms"]["p50"] / teacher["latency_ms"]["p50"]
        saved = (1 - ratio) / (1 - macs_ratio) if macs_ratio < 1 else 1.0
        out.append({"batch_size": batch, "teacher_p50": teacher["latency_ms"]["p50"], "student_p50": row["latency_ms"]["p50"],
                    "latency_ratio": ratio, "macs_ratio": macs_ratio, "time_follows_macs": saved >= TIME_FOLLOWS_MACS})
    return out


def pruning_section(outputs: dict[str, dict[str, Any]], rows: list[dict]) -> dict[str, Any] | None:
    """The pruning section's numbers; None when the run has no prune stage."""
    prune = outputs.get("prune") or {}
    if "layers" not in prune:
        return None
    teacher_top1 = prune.get("teacher_val_top1")
    accuracy = [{"stage": "teacher", "top1": teacher_top1}]
    for entry in prune.get("rounds") or []:
        accuracy.append({"stage": f"round {entry['round']}: pruned, before KD", "top1": entry.get("val_top1_pruned")})
        if entry.get("val_top1_tuned") is not None:
            accuracy.append({"stage": f"round {entry['round']}: after KD between rounds", "top1": entry["val_top1_tuned"]})
    for stage, what in (("distill", "pruned student after KD (distill)"),
                        ("baseline", "pruned student trained alone (baseline)")):
        if (outputs.get(stage) or {}).get("val_top1") is not None:
            accuracy.append({"stage": what, "top1": outputs[stage]["val_top1"]})
    for row in accuracy:
        row["delta_pts"] = (row["top1"] - teacher_top1) * 100 if None not in (row["top1"], teacher_top1) else None
    latency = _torch_latency(rows, prune["macs_ratio"])
    return {"method": prune["method"], "metric": prune["metric"], "target": prune["target"],
            "teacher": prune["teacher"], "student": prune["student"], "macs_ratio": prune["macs_ratio"],
            "params_ratio": prune["params_ratio"], "kept_whole": prune.get("kept_whole") or [],
            "layers": prune["layers"], "heads": prune.get("heads") or [], "accuracy": accuracy, "latency": latency,
            "latency_note": latency_note(latency)}


def latency_note(latency: list[dict[str, Any]]) -> str | None:
    slow = [entry for entry in latency if not entry["time_follows_macs"]]
    if not slow:
        return None
    entry = slow[0]
    return (f"Pruning removed MACs but not time: at batch {entry['batch_size']} the student keeps "
            f"{entry['macs_ratio']:.0%} of the teacher's MACs and takes {entry['latency_ratio']:.0%} of its PyTorch "
            "latency (small layers are bound by overheads, not arithmetic); the engines' rows above say what ships.")


def pruning_markdown(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    out = ["## Pruning: the student is the teacher, pruned", "",
           f"{section['method']} importance, to {section['target']:.0%} of the teacher's {section['metric']}; "
           f"kept whole: {', '.join(section['kept_whole']) or '-'}. MACs {count(section['teacher']['macs'])} → "
           f"{count(section['student']['macs'])} ({section['macs_ratio']:.1%}), params "
           f"{count(section['teacher']['params'])} → {count(section['student']['params'])} "
           f"({section['params_ratio']:.1%}).", ""]
    out += table(["", "val top-1", "vs teacher"],
                 [[a["stage"], pct(a["top1"]), pts(a["delta_pts"])] for a in section["accuracy"]], "lrr")
    out.append("")
    if section["latency"]:
        out += table(["batch", "teacher p50 ms (torch)", "student p50 ms (torch)", "latency ratio", "MACs ratio"],
                     [[e["batch_size"], ms(e["teacher_p50"]), ms(e["student_p50"]), pct(e["latency_ratio"], 1),
                       pct(e["macs_ratio"], 1)] for e in section["latency"]], "rrrrr")
        out.append("")
    if section["latency_note"]:
        out += [f"- ⚠ {section['latency_note']}", ""]
    if section["heads"]:
        out += ["Attention heads (whole heads go; the hidden width stays):", ""]
        out += table(["attention", "heads before → after"],
                     [[f"`{h['name']}`", f"{h['heads_before']} → {h['heads_after']}"] for h in section["heads"]], "lr")
        out.append("")
    out += table(["layer", "type", "in before → after", "out before → after"],
                 [[f"`{layer['name']}`", layer["type"], f"{layer['in_before']} → {layer['in_after']}",
                   f"{layer['out_before']} → {layer['out_after']}"] for layer in section["layers"]], "llrr")
    out.append("")
    return out
