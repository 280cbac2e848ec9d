"""The detector's report stage: report.md, a self-contained report.html and report.json from results.json.

What a reader needs to ship a detector: mAP of every model and engine with its interval, what KD bought
against the student trained alone (paired bootstrap over images), what int8 cost and where (per-class AP),
the speed against the teacher, the gates, and one picture to judge at a glance: the same held-out images with
the teacher's, the student's and the int8 engine's boxes side by side.
"""

from __future__ import annotations

from typing import Any

from compress.config import PipelineConfig
from compress.core.fileio import read_json
from compress.reporting.task_report import device_section, publish_report
from compress.stages.contract import Stage, StageContext

PICTURE_IMAGES = 4


def name_of(row: dict) -> str:
    return f"{row['model']} {row['backend']}:{row['precision']}"


def b1_ms(row: dict) -> float | None:
    return (row.get("latency") or {}).get("1", {}).get("p50_ms")


def paired(ctx: StageContext, records, rows: dict[str, dict], a: str, b: str) -> dict | None:
    from compress.tasks.object_detection.coco_metrics import paired_bootstrap_map
    from compress.tasks.object_detection.evaluation import load_detections

    if a not in rows or b not in rows:
        return None
    plan = ctx.data
    found_a = load_detections(ctx.path(rows[a]["detections"])).by_image
    found_b = load_detections(ctx.path(rows[b]["detections"])).by_image
    return paired_bootstrap_map(records, plan.class_names, plan.category_ids, found_a, found_b, rounds=200,
                                seed=ctx.pipeline.seed)


def recommend(rows: list[dict], pipeline: PipelineConfig) -> dict | None:
    """The student engine fastest at batch 1 within the mAP gate (all of them when no gate is set)."""
    teacher = next((r for r in rows if r["model"] == "teacher" and r["backend"] == "torch"), None)
    engines = [r for r in rows if r["model"] == "student" and r["backend"] != "torch" and b1_ms(r)]
    limit = pipeline.gates.max_map_drop
    within = [r for r in engines if limit is None or teacher is None
              or teacher["accuracy"]["map"] - r["accuracy"]["map"] <= limit]
    pool = within or engines
    return min(pool, key=b1_ms) if pool else None


def fastest_teacher(rows: list[dict]) -> dict | None:
    teachers = [r for r in rows if r["model"] == "teacher" and b1_ms(r)]
    return min(teachers, key=b1_ms) if teachers else None


def gates(pipeline: PipelineConfig, rows: list[dict], recommended: dict | None) -> list[dict[str, Any]]:
    g, found = pipeline.gates, []
    teacher = next((r for r in rows if r["model"] == "teacher" and r["backend"] == "torch"), None)
    if recommended is None:
        return found
    if g.max_map_drop is not None and teacher:
        drop = teacher["accuracy"]["map"] - recommended["accuracy"]["map"]
        found.append({"gate": "max_map_drop", "passed": drop <= g.max_map_drop,
                      "detail": f"{name_of(recommended)} mAP {drop * 100:.1f} points below the teacher's "
                                f"(limit {g.max_map_drop * 100:.1f})"})
    best_teacher = fastest_teacher(rows)
    if g.min_speedup is not None and best_teacher:
        speedup = b1_ms(best_teacher) / b1_ms(recommended)
        found.append({"gate": "min_speedup", "passed": speedup >= g.min_speedup,
                      "detail": f"{speedup:.2f}x the teacher's fastest ({name_of(best_teacher)}) vs {g.min_speedup:g}x"})
    if isinstance(g.max_latency_ms, (int, float)):
        found.append({"gate": "max_latency_ms", "passed": b1_ms(recommended) <= g.max_latency_ms,
                      "detail": f"{b1_ms(recommended):.2f} ms at batch 1 vs {g.max_latency_ms:g}"})
    if g.max_size_mb is not None:
        found.append({"gate": "max_size_mb", "passed": recommended["size_mb"] <= g.max_size_mb,
                      "detail": f"{recommended['size_mb']:.2f} MB vs {g.max_size_mb:g}"})
    peak = (recommended.get("memory") or {}).get("peak_mb")
    if g.max_memory_mb is not None and peak is not None:
        found.append({"gate": "max_memory_mb", "passed": peak <= g.max_memory_mb,
                      "detail": f"{peak:.0f} MB peak vs {g.max_memory_mb:g}"})
    if recommended.get("box_agreement") is not None:
        limit = g.engine_agreement(recommended["precision"])
        found.append({"gate": "min_engine_agreement", "passed": recommended["box_agreement"] >= limit,
                      "detail": f"{recommended['box_agreement']:.3f} of torch's boxes found again at IoU 0.9 "
                                f"vs {limit:g}"})
    return found


def device_lines(devices: list[dict], report: dict[str, Any]) -> list[str]:
    """Each device's box check and batch-1 latency beside this machine's for the same engine, and the
    max_latency_ms gate judged on the device's own number (the device is where it must hold)."""
    host, limit = report.get("host_b1_ms") or {}, report.get("max_latency_ms")

    def row_lines(row: dict) -> list[str]:
        p50 = (row.get("latency_ms") or {}).get("p50")
        here = host.get(name_of(row)) if {"model", "backend", "precision"} <= set(row) else None
        accuracy = row.get("accuracy") or {}
        file_to_boxes = (row.get("end_to_end") or {}).get("p50_ms")
        lines = [f"| {row.get('artifact', '?')} | {f'{p50:.3f}' if p50 else '-'} | "
                 f"{f'{p50 / here:.2f}x' if p50 and here else '-'} | "
                 f"{f'{file_to_boxes:.2f}' if file_to_boxes else '-'} | "
                 f"{accuracy.get('agreement_with_host', float('nan')):.1%} of {accuracy.get('images', '?')} "
                 f"images | {accuracy.get('min_agreement', float('nan')):.1%} |"]
        if limit is not None and p50:
            lines += ["", f"- max_latency_ms on this device: {'PASS' if p50 <= limit else 'FAIL'} "
                          f"({row.get('artifact')} {p50:.2f} ms at batch 1 vs {limit:g})"]
        return lines

    return device_section(
        devices, "Measured by the device's runner after each deploy: the sample images' boxes compared with this "
                 "machine's from the same engine (before `current` was switched), then batch-1 latency in rounds of "
                 "fresh loads as here, and the time from an image file to its boxes.",
        ["| engine | b1 p50 ms | device / this machine | file to boxes ms | boxes agree with this machine | required |",
         "|---|---|---|---|---|---|"], row_lines)


def intervals(ctx: StageContext, records, rows: list[dict]) -> dict[str, dict]:
    """Each scored artifact's mAP with its 95% bootstrap interval over the images."""
    from compress.tasks.object_detection.coco_metrics import bootstrap_map
    from compress.tasks.object_detection.evaluation import load_detections

    plan = ctx.data
    return {name_of(r): bootstrap_map(records, plan.class_names, plan.category_ids,
                                      load_detections(ctx.path(r["detections"])).by_image, rounds=100,
                                      seed=ctx.pipeline.seed)
            for r in rows if "detections" in r}


def model_table(rows: list[dict], spans: dict[str, dict]) -> list[str]:
    best_teacher = fastest_teacher(rows)
    lines = ["| artifact | mAP@[.5:.95] (95% interval) | mAP@.5 | boxes vs torch | ms b1 | images/s b1 | "
             "ms file to boxes | size MB | peak MB | vs teacher's fastest |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "accuracy" not in r:
            lines.append(f"| {name_of(r)} | {r.get('status', '-')} | | | | | | | | |")
            continue
        ms = b1_ms(r)
        speed = f"{b1_ms(best_teacher) / ms:.2f}x" if ms and best_teacher else "-"
        images = (r.get("latency") or {}).get("1", {}).get("images_per_s", "-")
        agreement = f"{r['box_agreement']:.3f}" if r.get("box_agreement") is not None else "-"
        peak = (r.get("memory") or {}).get("peak_mb", "-")
        span = spans.get(name_of(r)) or {}
        interval = f" ({span['low']:.3f}-{span['high']:.3f})" if span.get("low") is not None else ""
        lines.append(f"| {name_of(r)} | {r['accuracy']['map']:.3f}{interval} | {r['accuracy']['map50']:.3f} | {agreement} | "
                     f"{ms:.2f} | {images} | {r['end_to_end']['p50_ms']:.2f} | {r['size_mb']} | {peak} | {speed} |")
    return lines


def per_class_table(rows: list[dict], class_names: list[str]) -> list[str]:
    shown = [r for r in rows if "accuracy" in r and (r["backend"] == "torch" or r["precision"] == "int8")]
    lines = ["| class | " + " | ".join(name_of(r) for r in shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for name in class_names:
        values = [r["accuracy"]["per_class"].get(name) for r in shown]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in values) + " |")
    return lines


def kd_lines(verdicts: dict[str, dict | None]) -> list[str]:
    lines = []
    kd, vs_teacher = verdicts.get("kd_vs_alone"), verdicts.get("student_vs_teacher")
    if kd and kd.get("low") is not None:
        said = "KD helped" if kd["low"] > 0 else "KD hurt" if kd["high"] < 0 else "no difference the data can show"
        lines += ["## What distillation bought", "",
                  f"- KD student mAP {kd['a']:.3f} against {kd['b']:.3f} for the student trained alone: "
                  f"{kd['difference'] * 100:+.1f} points (95% paired bootstrap over images: "
                  f"{kd['low'] * 100:+.1f} to {kd['high'] * 100:+.1f}): **{said}**."]
    if vs_teacher and vs_teacher.get("low") is not None:
        lines += [f"- Against the teacher ({vs_teacher['b']:.3f}): {vs_teacher['difference'] * 100:+.1f} points "
                  f"({vs_teacher['low'] * 100:+.1f} to {vs_teacher['high'] * 100:+.1f})."]
    return lines + ([""] if lines else [])


def picture(ctx: StageContext, rows: list[dict], records) -> str | None:
    """PNG of the first held-out images with each chosen artifact's boxes, one column per artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from compress.tasks.object_detection.evaluation import load_detections
    from deploy.runner.detection import draw_detections

    wanted = [("teacher", "torch", "fp32"), ("student", "torch", "fp32")]
    int8 = [r for r in rows if r["model"] == "student" and r["precision"] == "int8" and "detections" in r]
    chosen = [r for key in wanted for r in rows if (r["model"], r["backend"], r["precision"]) == key] + int8[:1]
    if not chosen or not records:
        return None
    shown = records[:PICTURE_IMAGES]
    found = [load_detections(ctx.path(r["detections"])).by_image for r in chosen]
    names = ctx.data.class_names
    figure, axes = plt.subplots(len(shown), len(chosen), figsize=(3 * len(chosen), 3 * len(shown)), squeeze=False)
    for i, record in enumerate(shown):
        with Image.open(record.path) as image:
            image = image.convert("RGB")
            for j, (row, by_image) in enumerate(zip(chosen, found)):
                detections = by_image.get(record.image_id)
                kept = {k: v[detections["scores"] >= 0.3] for k, v in detections.items()} if detections else None
                axes[i][j].imshow(draw_detections(image, kept, names) if kept else image)
                axes[i][j].set_axis_off()
                if i == 0:
                    axes[i][j].set_title(name_of(row), fontsize=9)
    figure.tight_layout()
    path = ctx.stage_dir / "boxes.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return str(path)


class DetReportStage(Stage):
    name = "report"
    reads = ("benchmark", "teacher", "baseline", "distill", "export", "build")

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"gates": pipeline.gates.model_dump(mode="json"), "name": pipeline.name}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        results = read_json(ctx.path(ctx.outputs["benchmark"]["results"]))
        rows, plan = results["rows"], ctx.data
        records = plan.splits()[results["split"]].images
        by_name = {name_of(r): r for r in rows if "accuracy" in r}
        verdicts = {"kd_vs_alone": paired(ctx, records, by_name, "student torch:fp32", "baseline torch:fp32"),
                    "student_vs_teacher": paired(ctx, records, by_name, "student torch:fp32", "teacher torch:fp32")}
        recommended = recommend(rows, ctx.pipeline)
        checked = gates(ctx.pipeline, rows, recommended)
        env = results["env"]
        lines = [f"# {ctx.pipeline.name}: detection deployment report", "",
                 f"Written by `compress run`. COCO mAP (pycocotools) on {results['images']} {results['split']} images; "
                 f"every artifact decoded and suppressed by the same numpy code as the device "
                 f"(score >= {results['post']['score_threshold']:g}, NMS IoU {results['post']['iou_threshold']:g}, "
                 f"at most {results['post']['max_detections']} boxes). Timings: {env.get('cpu', 'CPU')}, "
                 f"{results['threads']} threads, medians.", ""]
        if recommended:
            lines += [f"**Recommended: {name_of(recommended)}** (mAP {recommended['accuracy']['map']:.3f}, "
                      f"{b1_ms(recommended):.2f} ms at batch 1).", ""]
        spans = intervals(ctx, records, rows)
        lines += ["## Models and engines", ""] + model_table(rows, spans) + [""]
        lines += ["Boxes vs torch: share of the torch model's boxes the engine finds again (same class, IoU >= 0.9) "
                  "on the parity images.", ""]
        lines += kd_lines(verdicts)
        lines += ["## AP per class", ""] + per_class_table(rows, plan.class_names) + [""]
        png = picture(ctx, rows, records)
        if png:
            lines += ["## Boxes side by side", "", "![boxes](boxes.png)", ""]
        if checked:
            lines += ["## Gates", ""] + [f"- {g['gate']}: {'PASS' if g['passed'] else 'FAIL'} ({g['detail']})"
                                         for g in checked] + [""]
        limit = ctx.pipeline.gates.max_latency_ms
        report = {"recommended": name_of(recommended) if recommended else None, "gates": checked, **verdicts,
                  "map_intervals": spans, "host_b1_ms": {name_of(r): b1_ms(r) for r in rows if b1_ms(r)},
                  "max_latency_ms": limit if isinstance(limit, (int, float)) else None}
        publish_report(ctx.stage_dir, ctx.run_dir, "\n".join(lines), ctx.pipeline.name, report, device_lines)
        for g in checked:
            ctx.log(f"gate {g['gate']}: {'PASS' if g['passed'] else 'FAIL'} ({g['detail']})")
        return {"report": ctx.relative(ctx.stage_dir / "report.md"), "html": ctx.relative(ctx.stage_dir / "report.html"),
                "json": ctx.relative(ctx.stage_dir / "report.json"), "recommended": report["recommended"],
                "gates": checked, "gates_passed": all(g["passed"] for g in checked)}
