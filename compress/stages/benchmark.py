"""benchmark: latency, throughput, memory, accuracy and size of the teacher and every student artifact.

Writes results.json, the contract read by report and deploy (see DESIGN.md). Every artifact goes
through the same harness (`deploy.runner.harness`) and sees the same preprocessed arrays: the test
split when the data has one, else the validation split. Each row keeps its per-sample predictions
(and results.json the labels once), so the report can compare two artifacts on the same images.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import numpy as np
from pydantic import Field

from compress.measuring.artifacts import open_session
from compress.reporting.uncertainty import encode
from deploy.runner.harness import LatencySettings, measure_rounds
from compress.config import ADDED_LATER, PipelineConfig, Strict
from compress.core.fileio import write_json
from compress.data.splits import predict as predict_split
from compress.measuring.environment import artifact_mb, environment
from compress.measuring.footprint import describe, measure_footprint
from compress.stages.contract import Stage, StageContext
from compress.tasks.registry import task_for


class BenchmarkConfig(Strict):
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32], min_length=1)
    warmup: int = Field(5, ge=0, description="warm-up runs (at least this many ...)")
    warmup_seconds: float = Field(0.2, ge=0, description="... and at least this long)")
    runs: int = Field(30, ge=1, description="timed runs (at least this many ...)")
    min_seconds: float = Field(0.5, ge=0, description="... and at least this long)")
    rounds: int = Field(3, ge=1, description="fresh loads per artifact, interleaved across artifacts; the p50's "
                                            "repeat spread comes from them (1: within-run sampling error only)")
    threads: int | None = Field(None, ge=1, description="intra-op threads; default: all cores")
    memory: bool = Field(True, description="measure each artifact's memory alone in a fresh process "
                                           "(compress/measuring/footprint.py); needed by gates.max_memory_mb")
    sequence_lengths: list[int] | None = Field(None, json_schema_extra=ADDED_LATER,
                                               description="text models: lengths timed in the (batch, length) grid; "
                                                           "default 8, max_length / 2, max_length")

    def check(self, pipeline: PipelineConfig):
        if not self.memory and pipeline.gates.max_memory_mb is not None:
            return "memory", "is false, but gates.max_memory_mb needs each artifact's memory measured"
        if self.sequence_lengths is not None:
            longest = task_for(pipeline).max_sequence_length()
            if longest is None:
                return "sequence_lengths", "times text models; this pipeline's data are not texts"
            wrong = [n for n in self.sequence_lengths if not 1 <= n <= longest]
            if wrong or not self.sequence_lengths:
                return "sequence_lengths", (f"{wrong[0]} is outside 1..{longest} (data.text.max_length)" if wrong
                                            else "give at least one length")
        bad = [b for b in self.batch_sizes if b < 1]
        if bad:
            return "batch_sizes", f"must be positive integers, got {bad[0]}"
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            return "batch_sizes", "lists a batch size twice"
        limits = pipeline.gates.max_latency_ms
        unmeasured = sorted(set(limits) - set(self.batch_sizes)) if isinstance(limits, dict) else []
        if unmeasured:  # the gate would fail after the whole run, "not benchmarked"
            return "batch_sizes", (f"{self.batch_sizes} has no batch {unmeasured[0]}, but gates.max_latency_ms sets a "
                                   f"limit for it: add it here or drop it from the gate")
        return None


class Measured(NamedTuple):
    """One artifact of the table; `load` runs once per round, so every round times a fresh load."""

    model: str
    artifact: str
    backend: str
    precision: str
    load: Callable[[], Any]
    params: int
    macs: int


class BenchmarkStage(Stage):
    name = "benchmark"
    Config = BenchmarkConfig
    reads = ("teacher", "baseline", "distill", "quantize", "export", "build")

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"data": pipeline.data.model_dump(mode="json"), "seed": pipeline.seed}

    def threads(self, pipeline: PipelineConfig) -> tuple[str, int] | None:
        """Its own `threads` or all cores, never the pipeline's: latency is what it measures, and its threads
        are part of its key and its results."""
        count = pipeline.stages[self.name].threads
        return ("stages.benchmark.threads", count) if count else \
            ("all cores: stages.benchmark.threads is unset", os.cpu_count() or 1)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from compress.models import count_params, load_model

        cfg: BenchmarkConfig = ctx.config
        threads = self.threads(ctx.pipeline)[1]
        data = ctx.data
        settings = LatencySettings(cfg.warmup, cfg.warmup_seconds, cfg.runs, cfg.min_seconds, ctx.pipeline.seed)
        task = ctx.task
        # A per-sample shape, or the input specs timed at their longest sequence (the fixed-shape worst case,
        # what gates and the recommendation read) and over the task's (batch, length) grid.
        shape = task.timing_inputs(data)
        length = task.max_sequence_length()
        teacher_path = ctx.outputs["teacher"]["checkpoint"]
        student_path = ctx.outputs["distill"]["checkpoint"]
        teacher, _ = load_model(ctx.path(teacher_path))
        student, _ = load_model(ctx.path(student_path))
        t_params, t_macs = count_params(teacher), task.count_macs(teacher, data)
        s_params, s_macs = count_params(student), task.count_macs(student, data)
        del teacher, student

        def loader(artifact: str, backend: str) -> Callable[[], Any]:
            return lambda: open_session(ctx.path(artifact), backend, threads)

        artifacts = [
            Measured("teacher", teacher_path, "torch", "fp32", loader(teacher_path, "torch"), t_params, t_macs),
            Measured("student", student_path, "torch", "fp32", loader(student_path, "torch"), s_params, s_macs)]
        baseline_path = (ctx.outputs.get("baseline") or {}).get("checkpoint")
        shipped_alone = baseline_path is not None and "baseline_onnx" in (ctx.outputs.get("export") or {})
        if shipped_alone:  # stages.export.recommend_from lists baseline: the student alone is a candidate too
            artifacts.append(Measured("baseline", baseline_path, "torch", "fp32", loader(baseline_path, "torch"),
                                      s_params, s_macs))
        built = ctx.outputs.get("build", {}).get("engines", [])
        artifacts += [Measured(e["model"], e["artifact"], e["backend"], e["precision"],
                               loader(e["artifact"], e["backend"]), s_params, s_macs) for e in built]
        engine_parity = {e["artifact"]: e["parity"] for e in built if e.get("parity")}  # checked by the build
        split, scored_split = data.scored_split()
        y_scored = scored_split.labels  # of the inputs scored (a stream skipping bad images leaves some out)
        accuracy: list[dict] = []
        predictions: list[str] = []
        teacher_top1: np.ndarray | None = None

        def scored(session: Any) -> tuple[dict, str]:
            """Accuracy and predictions on the scored split; the teacher comes first (agreement is against it)."""
            nonlocal teacher_top1, y_scored
            logits, y_scored = predict_split(session.infer, scored_split, 64)  # engine profiles stop at 64
            if teacher_top1 is None:
                teacher_top1 = logits.argmax(1)
            metrics, predicted = task.evaluate(logits, y_scored, teacher_top1)
            return metrics, encode(predicted)

        computed_in: dict[int, str] = {}  # artifact index -> what its backend computed in, where not its precision

        def score(index: int, session: Any) -> None:
            """Accuracy right after the artifact's first load; what the backend computes in, when it says."""
            acc, predicted = scored(session)
            accuracy.append(acc)
            predictions.append(predicted)
            a = artifacts[index]
            ran = getattr(session, "precision", None)
            if ran and ran != a.precision:
                computed_in[index] = ran
            ran_as = f", ran as {ran}" if index in computed_in else ""
            ctx.log(f"{a.model:8s} {a.backend:12s} {a.precision:5s} top-1 {accuracy[-1]['top1']:.4f} ({split}{ran_as})")

        timings = measure_rounds([a.load for a in artifacts], shape, cfg.batch_sizes, settings, cfg.rounds,
                                 on_first_load=score,
                                 on_round=lambda r: ctx.log(f"round {r + 1}/{cfg.rounds} timed"), sequence_length=length)
        grid = self.sequence_grid(ctx, artifacts, shape, settings, timings) if task.sequence_lengths(data) else None
        accuracy_only = []
        if baseline_path is not None and not shipped_alone:  # scored for the report's KD comparison, not timed
            with open_session(ctx.path(baseline_path), "torch", threads) as session:
                acc, predicted = scored(session)
            accuracy_only.append({"model": "baseline", "artifact": baseline_path, "backend": "torch",
                                  "precision": "fp32", "accuracy": acc, "predictions": predicted})
        memory = [self.measure_memory(ctx, a, shape, max(cfg.batch_sizes), threads, length) if cfg.memory else None
                  for a in artifacts]
        rows: list[dict[str, Any]] = []
        for index, (a, acc, predicted, per_batch, footprint) in enumerate(zip(artifacts, accuracy, predictions,
                                                                               timings, memory)):
            ran = {"computed_in": computed_in[index]} if index in computed_in else {}
            for timing in per_batch:
                rows.append({"model": a.model, "artifact": a.artifact, "backend": a.backend, "precision": a.precision,
                             **ran, **timing, "accuracy": acc, "params": a.params, "macs": a.macs,
                             "size_mb": artifact_mb(ctx.path(a.artifact)), "threads": threads,
                             **({"engine_parity": engine_parity[a.artifact]} if a.artifact in engine_parity else {}),
                             **({"memory": footprint} if footprint else {}), "predictions": predicted})
                lat = timing["latency_ms"]
                ctx.log(f"{a.model:8s} {a.backend:12s} {a.precision:5s} b{timing['batch_size']:<3d} p50 "
                        f"{lat['p50']:8.3f} ms ±{lat['p50_spread']:.3f} (std {lat['std']:.3f})"
                        f"{'  (noisy)' if lat['noisy'] else ''}")
        # val_samples counts the scored samples (test ones when accuracy_split is "test"), as it always has.
        results = {"env": environment(threads), "val_samples": int(len(y_scored)), "accuracy_split": split,
                   "class_names": list(data.class_names), "settings": cfg.model_dump(mode="json"),
                   "labels": encode(y_scored), "accuracy_only": accuracy_only, "rows": rows,
                   **task.results_fields(length, grid)}
        path = ctx.stage_dir / "results.json"
        write_json(path, results)
        return {"results": ctx.relative(path)}

    @staticmethod
    def sequence_grid(ctx: StageContext, artifacts: list[Measured], specs, settings: LatencySettings,
                      main_timings: list[list[dict]]) -> list[dict[str, Any]]:
        """Latency and tokens/s of every artifact at each (batch, sequence length), one round each: how the
        cost grows with the text, beside the main rows at max_length (whose timings it reuses, not repeats)."""
        cfg: BenchmarkConfig = ctx.config
        lengths = cfg.sequence_lengths or ctx.task.sequence_lengths(ctx.data)
        longest = ctx.task.max_sequence_length()
        grid = []
        for length in lengths:
            per_artifact = main_timings if length == longest else measure_rounds(
                [a.load for a in artifacts], specs, cfg.batch_sizes, settings, 1, sequence_length=length)
            for a, per_batch in zip(artifacts, per_artifact):
                for timing in per_batch:
                    grid.append({"model": a.model, "backend": a.backend, "precision": a.precision,
                                 "batch_size": timing["batch_size"], "sequence_length": length,
                                 "latency_ms": timing["latency_ms"], "tokens_per_s": timing.get("tokens_per_s")})
            ctx.log(f"sequence length {length}: timed at batch {', '.join(map(str, cfg.batch_sizes))}")
        return grid

    @staticmethod
    def measure_memory(ctx: StageContext, a: Measured, shape, batch: int, threads: int,
                       sequence_length: int | None = None) -> dict:
        """The artifact alone in a fresh process (after the timing, so it never competes with it)."""
        footprint = measure_footprint(ctx.path(a.artifact), a.backend, shape, batch, threads,
                                      sequence_length=sequence_length)
        ctx.log(f"{a.model:8s} {a.backend:12s} {a.precision:5s} memory {describe(footprint)}")
        return footprint
