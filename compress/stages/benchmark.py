"""benchmark: latency, throughput, memory, accuracy and size of the teacher and every student artifact.

Writes results.json, the contract read by report and deploy (see DESIGN.md). Every artifact goes
through the same harness (`compress.bench`) and sees the same preprocessed validation arrays.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import Field

from compress.artifacts import TorchSession, open_session
from compress.bench import LatencySettings, accuracy_report, benchmark_session, predict, reset_peak_rss
from compress.config import PipelineConfig, Strict
from compress.fileio import write_json
from compress.stages import register_stage
from compress.stages.base import Stage, StageContext


class BenchmarkConfig(Strict):
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32], min_length=1)
    warmup: int = Field(5, ge=0, description="warm-up runs (at least this many ...)")
    warmup_seconds: float = Field(0.2, ge=0, description="... and at least this long)")
    runs: int = Field(30, ge=1, description="timed runs (at least this many ...)")
    min_seconds: float = Field(0.5, ge=0, description="... and at least this long)")
    threads: int | None = Field(None, ge=1, description="intra-op threads; default: all cores")

    def check(self, pipeline: PipelineConfig):
        bad = [b for b in self.batch_sizes if b < 1]
        if bad:
            return "batch_sizes", f"must be positive integers, got {bad[0]}"
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            return "batch_sizes", "lists a batch size twice"
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int) -> dict[str, Any]:
    """Machine and library versions, so a number can be traced to where it was measured."""
    import torch

    from compress import __version__

    def version(module: str) -> str | None:
        try:
            return __import__(module).__version__
        except Exception:
            return None

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "compress": __version__,
        "numpy": np.__version__,
        "torch": torch.__version__,
        "onnx": version("onnx"),
        "onnxruntime": version("onnxruntime"),
        "openvino": version("openvino"),
        "nncf": version("nncf"),
        "tensorrt": version("tensorrt"),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def artifact_mb(path: str | os.PathLike) -> float:
    """Size on disk of an artifact with its companion files (an IR's .bin, an ONNX's external data)."""
    path = Path(path)
    companions = [p for p in path.parent.glob(f"{path.stem}.*")
                  if p.is_file() and p != path and p.name != "engine.json" and p.suffix in (".bin", ".data")]
    return round(sum(p.stat().st_size for p in [path, *companions]) / 1e6, 4)


@register_stage
class BenchmarkStage(Stage):
    name = "benchmark"
    Config = BenchmarkConfig
    reads = ("teacher", "distill", "quantize", "export", "build")

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"data": pipeline.data.model_dump(mode="json"), "seed": pipeline.seed}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from compress.models import count_macs, count_params, load_model

        cfg: BenchmarkConfig = ctx.config
        threads = cfg.threads or os.cpu_count() or 1
        data = ctx.data
        settings = LatencySettings(cfg.warmup, cfg.warmup_seconds, cfg.runs, cfg.min_seconds, ctx.pipeline.seed)
        shape = data.input_shape
        rows: list[dict[str, Any]] = []
        teacher_top1: np.ndarray | None = None

        def measure(model_name: str, artifact: str, backend: str, precision: str, open_: Callable, params: int,
                    macs: int) -> None:
            nonlocal teacher_top1
            reset_peak_rss()
            with open_() as session:
                logits = predict(session.infer, data.x_val)
                if teacher_top1 is None:
                    teacher_top1 = logits.argmax(1)
                acc = accuracy_report(logits, data.y_val, teacher_top1)
                for timing in benchmark_session(session.infer, shape, cfg.batch_sizes, settings):
                    rows.append({"model": model_name, "artifact": artifact, "backend": backend,
                                 "precision": precision, **timing, "accuracy": acc, "params": params,
                                 "macs": macs, "size_mb": artifact_mb(ctx.path(artifact)), "threads": threads})
                    lat = timing["latency_ms"]
                    ctx.log(f"{model_name:8s} {backend:12s} {precision:5s} b{timing['batch_size']:<3d} p50 "
                            f"{lat['p50']:8.3f} ms ±{lat['std']:.3f}  top-1 {acc['top1']:.4f}"
                            f"{'  (noisy)' if lat['noisy'] else ''}")

        teacher_path = ctx.outputs["teacher"]["checkpoint"]
        teacher, _ = load_model(ctx.path(teacher_path))
        measure("teacher", teacher_path, "torch", "fp32", lambda: TorchSession(teacher, threads),
                count_params(teacher), count_macs(teacher, shape))
        student_path = ctx.outputs["distill"]["checkpoint"]
        student, _ = load_model(ctx.path(student_path))
        s_params, s_macs = count_params(student), count_macs(student, shape)
        measure("student", student_path, "torch", "fp32", lambda: TorchSession(student, threads), s_params, s_macs)
        for engine in ctx.outputs.get("build", {}).get("engines", []):
            artifact = ctx.path(engine["artifact"])
            measure(engine["model"], engine["artifact"], engine["backend"], engine["precision"],
                    lambda: open_session(artifact, engine["backend"], threads), s_params, s_macs)
        results = {"env": environment(threads), "val_samples": int(len(data.y_val)),
                   "class_names": list(data.class_names), "settings": cfg.model_dump(mode="json"), "rows": rows}
        path = ctx.stage_dir / "results.json"
        write_json(path, results)
        return {"results": ctx.relative(path)}
