"""The detector's benchmark: mAP, latency, images/s, memory and size of every model and engine.

Every artifact is scored on the same evaluation split with the same letterbox and the same numpy decode + NMS
(so mAP differs only by what computes the predictions). Latency is measured twice: the model alone on a
letterboxed batch (the shared harness, warm-up and rounds), and end to end per image: decode the file,
letterbox, run, decode + NMS (what a device spends per image). Peak memory is each engine alone in a fresh
process (compress.measuring.footprint).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from compress.config import Strict
from compress.config.base import NOT_IN_KEY
from compress.stages.contract import Stage, StageContext


class DetBenchmarkConfig(Strict):
    batch_sizes: list[int] = Field([1, 8], min_length=1, description="model-only latency and images/s")
    end_to_end_images: int = Field(20, ge=1, description="images timed file -> boxes, one at a time")
    rounds: int = Field(3, ge=1, description="latency rounds per artifact; the median round is reported")
    memory: bool = Field(True, description="peak memory of each engine alone in a fresh process")
    threads: int | None = Field(None, ge=1, json_schema_extra=NOT_IN_KEY)


def size_mb(path: Path) -> float:
    files = [p for p in path.parent.iterdir() if p.is_file()] if path.suffix == ".xml" else [path]
    if path.suffix == ".xml":
        files = [path, path.with_suffix(".bin")]
    return round(sum(f.stat().st_size for f in files if f.exists()) / 1e6, 3)


def end_to_end(predict, records, size: int, post) -> dict[str, float]:
    """Median ms per image from the file to its boxes, one image at a time (warm-up: the first two)."""
    from PIL import Image

    from deploy.runner.detection import letterbox, postprocess

    times = []
    for record in records:
        started = time.perf_counter()
        with Image.open(record.path) as image:
            array, scale = letterbox(image, size)
        predictions = predict(array[None])
        postprocess(predictions, [scale], [(record.width, record.height)], post.score_threshold, post.iou_threshold,
                    post.max_detections, post.pre_nms_top_k)
        times.append((time.perf_counter() - started) * 1000)
    kept = times[2:] if len(times) > 4 else times
    return {"p50_ms": round(float(np.median(kept)), 3), "images": len(kept)}


class DetBenchmarkStage(Stage):
    name = "benchmark"
    Config = DetBenchmarkConfig
    reads = ("teacher", "baseline", "distill", "export", "build")

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import torch

        from compress.measuring.environment import environment
        from compress.measuring.footprint import measure_footprint
        from compress.stages.detection.det_training import post_settings
        from compress.tasks.object_detection.evaluation import (detect, load_detections, save_detections, score,
                                                                torch_predict)
        from compress.tasks.object_detection.detectors import load_detector
        from deploy.engines import ENGINES
        from deploy.runner.harness import LatencySettings, measure_latency

        cfg: DetBenchmarkConfig = ctx.config
        plan = ctx.data
        post, size = post_settings(plan), plan.options.image_size
        records = plan.splits()[plan.eval_split].images
        timed = records[:cfg.end_to_end_images]
        threads = cfg.threads or torch.get_num_threads()
        rows: list[dict[str, Any]] = []

        def timing(predict) -> dict[str, Any]:
            latency = {}
            for batch in cfg.batch_sizes:
                runs = [measure_latency(predict, (3, size, size), batch, LatencySettings(seed=r))
                        for r in range(cfg.rounds)]
                p50 = sorted(row["latency_ms"]["p50"] for row in runs)[len(runs) // 2]
                latency[str(batch)] = {"p50_ms": round(p50, 3), "images_per_s": round(batch * 1000 / p50, 2)}
            return {"latency": latency, "end_to_end": end_to_end(predict, timed, size, post)}

        torch_models = [("teacher", "teacher"), ("baseline", "baseline"), ("student", "distill")]
        for name, stage in torch_models:
            if stage not in ctx.outputs:
                continue
            model = load_detector(ctx.path(ctx.outputs[stage]["model"]))[0]
            torch.set_num_threads(threads)
            found = load_detections(ctx.path(ctx.outputs[stage]["detections"]))
            rows.append({"model": name, "backend": "torch", "precision": "fp32",
                         "artifact": ctx.outputs[stage]["model"], "accuracy": score(records, found, plan.class_names,
                                                                                    plan.category_ids),
                         "detections": ctx.outputs[stage]["detections"],
                         "params": ctx.outputs[stage]["params"],
                         "size_mb": size_mb(ctx.path(ctx.outputs[stage]["model"])),
                         **timing(torch_predict(model))})
            ctx.log(f"{name} torch: mAP {rows[-1]['accuracy']['map']:.3f}, "
                    f"{rows[-1]['latency'][str(cfg.batch_sizes[0])]['p50_ms']:.2f} ms at batch {cfg.batch_sizes[0]}")
        for engine_row in ctx.outputs.get("build", {}).get("engines", []):
            if engine_row["status"] != "built":
                rows.append({"model": engine_row["model"], "backend": engine_row["backend"],
                             "precision": engine_row["precision"], "status": engine_row["status"]})
                continue
            backend, precision = engine_row["backend"], engine_row["precision"]
            artifact = ctx.path(engine_row["artifact"])
            engine = ENGINES[backend]()
            session = engine.load(artifact, threads)
            found = detect(session.infer, records, size, post)
            path = ctx.stage_dir / f"{engine_row['model']}.{backend}.{precision}.detections.npz"
            save_detections(found, path)
            row = {"model": engine_row["model"], "backend": backend, "precision": precision,
                   "artifact": engine_row["artifact"], "detections": ctx.relative(path),
                   "accuracy": score(records, found, plan.class_names, plan.category_ids),
                   "box_agreement": engine_row["parity"]["agreement"], "size_mb": size_mb(artifact),
                   **timing(session.infer)}
            session.close()
            if cfg.memory:
                row["memory"] = measure_footprint(artifact, backend, (3, size, size), 1, threads,
                                                  precision=precision if backend == "openvino" else None)
            rows.append(row)
            ctx.log(f"{row['model']} {backend}:{precision}: mAP {row['accuracy']['map']:.3f}, "
                    f"{row['latency'][str(cfg.batch_sizes[0])]['p50_ms']:.2f} ms at batch {cfg.batch_sizes[0]}, "
                    f"{row['end_to_end']['p50_ms']:.2f} ms file to boxes")
        # own_report: the report stage of this task reads these rows; the shared report and `compress runs` do not.
        results = {"env": environment(threads), "task": "object-detection", "own_report": True,
                   "split": plan.eval_split,
                   "images": len(records), "threads": threads, "rows": rows, "post": post.as_dict()}
        from compress.core.fileio import write_json

        write_json(ctx.stage_dir / "results.json", results)
        return {"results": ctx.relative(ctx.stage_dir / "results.json"), "rows": len(rows)}
