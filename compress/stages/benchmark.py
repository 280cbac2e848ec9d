"""benchmark: latency, throughput, accuracy and size of the teacher and every student artifact.

Writes results.json, the contract read by report and deploy (see DESIGN.md).
"""

from __future__ import annotations

import os
import platform
from typing import Any, Callable

import numpy as np
import torch
from pydantic import Field

from compress.bench import LatencySettings, accuracy_report, measure_latency, predict
from compress.config import PipelineConfig, Strict
from compress.fileio import write_json
from compress.models import count_macs, count_params, load_model
from compress.stages import register_stage
from compress.stages.base import Stage, StageContext


class BenchmarkConfig(Strict):
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32], min_length=1)
    warmup: int = Field(5, ge=0)
    runs: int = Field(30, ge=1)
    min_seconds: float = Field(0.5, ge=0)
    threads: int | None = Field(None, ge=1, description="intra-op threads; default: all cores")


def torch_infer(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    model = model.eval()

    def infer(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return infer


def environment(threads: int) -> dict[str, Any]:
    def version(module: str) -> str | None:
        try:
            return __import__(module).__version__
        except Exception:
            return None

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": version("onnxruntime"),
        "openvino": version("openvino"),
        "tensorrt": version("tensorrt"),
    }


def file_mb(path) -> float:
    return round(os.path.getsize(path) / 1e6, 4)


@register_stage
class BenchmarkStage(Stage):
    name = "benchmark"
    Config = BenchmarkConfig
    reads = ("teacher", "distill", "quantize", "export", "build")

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"data": pipeline.data.model_dump(mode="json"), "seed": pipeline.seed}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from deploy.engines import get_engine

        cfg: BenchmarkConfig = ctx.config
        threads = cfg.threads or os.cpu_count() or 1
        torch.set_num_threads(threads)
        data = ctx.data
        settings = LatencySettings(cfg.warmup, 0.2, cfg.runs, cfg.min_seconds, ctx.pipeline.seed)
        teacher, _ = load_model(ctx.path(ctx.outputs["teacher"]["checkpoint"]))
        student, _ = load_model(ctx.path(ctx.outputs["distill"]["checkpoint"]))
        shape = data.input_shape
        rows: list[dict[str, Any]] = []
        teacher_top1 = None

        def add(model_name: str, artifact: str, backend: str, precision: str, infer, params: int, macs: int):
            nonlocal teacher_top1
            logits = predict(infer, data.x_val)
            if teacher_top1 is None:
                teacher_top1 = logits.argmax(1)
            acc = accuracy_report(logits, data.y_val, teacher_top1)
            for batch in cfg.batch_sizes:
                timing = measure_latency(infer, shape, batch, settings)
                rows.append({"model": model_name, "artifact": artifact, "backend": backend, "precision": precision,
                             "batch_size": batch, **timing, "accuracy": acc, "params": params, "macs": macs,
                             "size_mb": file_mb(ctx.path(artifact)), "threads": threads})
                ctx.log(f"{model_name:8s} {backend:12s} {precision:5s} b{batch:<3d} p50 "
                        f"{timing['latency_ms']['p50']:8.3f} ms  top-1 {acc['top1']:.4f}")

        add("teacher", ctx.outputs["teacher"]["checkpoint"], "torch", "fp32", torch_infer(teacher),
            count_params(teacher), count_macs(teacher, shape))
        s_params, s_macs = count_params(student), count_macs(student, shape)
        add("student", ctx.outputs["distill"]["checkpoint"], "torch", "fp32", torch_infer(student), s_params, s_macs)
        for engine in ctx.outputs.get("build", {}).get("engines", []):
            with get_engine(engine["backend"]).load(ctx.path(engine["artifact"]), threads) as session:
                add(engine["model"], engine["artifact"], engine["backend"], engine["precision"], session.infer,
                    s_params, s_macs)
        results = {"env": environment(threads), "val_samples": int(len(data.y_val)), "rows": rows}
        path = ctx.stage_dir / "results.json"
        write_json(path, results)
        return {"results": ctx.relative(path)}
