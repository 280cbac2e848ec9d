"""export: ONNX (opset, dynamic batch), onnx.checker, simplify, parity against PyTorch.

The KD student always; the student trained alone too when `recommend_from` lists baseline, so that
build and benchmark make and measure its engines and the report can recommend it when it is the
more accurate of the two.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from compress.config import ADDED_LATER, PipelineConfig, Strict
from compress.distill.train import predict_logits
from compress.core.errors import StageFailed
from compress.exporting.torch_to_onnx import onnx_logits, parity, parity_at_lengths, simplify_onnx
from compress.core.fileio import sha256_file, write_json, write_text
from compress.models import load_model
from compress.stages.contract import Stage, StageContext
from compress.stages.tensorrt_checks import export_for_tensorrt, tensorrt_key_material


class ExportConfig(Strict):
    opset: int = Field(17, ge=13, le=21)
    dynamic_batch: bool = True
    simplify: bool = True
    parity_samples: int = Field(256, ge=1)
    atol: float = Field(1e-3, gt=0, description="max abs error of logits allowed against PyTorch")
    min_top1_agreement: float = Field(0.99, ge=0, le=1)
    recommend_from: list[Literal["distill", "baseline"]] = Field(
        json_schema_extra=ADDED_LATER,
        default_factory=lambda: ["distill"], description="students that go on to build and benchmark, so the report "
        "can recommend any of them: distill (the KD student), baseline (the student trained alone)")

    def check(self, pipeline: PipelineConfig) -> tuple[str, str] | None:
        if "distill" not in self.recommend_from:
            return "recommend_from", "must list distill: the KD student is always exported (add baseline beside it)"
        if len(set(self.recommend_from)) != len(self.recommend_from):
            return "recommend_from", "lists a student twice"
        if "baseline" in self.recommend_from and "baseline" not in pipeline.stages:
            return "recommend_from", ("lists baseline, but the pipeline trains no student alone: add `baseline: {}` "
                                      "to stages")
        return None


def export_model(ctx: StageContext, cfg: ExportConfig, model, path, shape=None) -> None:
    """The task's inputs by name with their dynamic axes (one float32 image batch, a text model's token ids)."""
    ctx.task.export(model, path, ctx.data, cfg.opset, cfg.dynamic_batch, shape)


def length_parity(ctx: StageContext, cfg: ExportConfig, model, path) -> dict[str, Any] | None:
    """Parity at the shortest, a middle and the longest sequence length (None for fixed-shape inputs)."""
    task, data = ctx.task, ctx.data
    lengths = task.sequence_lengths(data)
    if not lengths:
        return None
    per_length = parity_at_lengths(model, path, lambda length: task.example_inputs(data, 4, length), lengths)
    for report in per_length.values():
        report["passed"] = report["max_abs_error"] <= cfg.atol and report["top1_agreement"] >= cfg.min_top1_agreement
    return {str(length): report for length, report in per_length.items()}


def export_baseline(ctx: StageContext, cfg: ExportConfig, x) -> dict[str, Any]:
    """The student trained alone as baseline.onnx, with the same parity check as the KD student's."""
    model, _ = load_model(ctx.path(ctx.outputs["baseline"]["checkpoint"]))
    path = ctx.stage_dir / "baseline.onnx"
    export_model(ctx, cfg, model, path)
    if cfg.simplify:
        simplify_onnx(path)
    report = parity(predict_logits(model, x).numpy(), onnx_logits(path, x))
    report["passed"] = report["max_abs_error"] <= cfg.atol and report["top1_agreement"] >= cfg.min_top1_agreement
    ctx.log(f"baseline.onnx (the student alone): max abs error {report['max_abs_error']:.2e}, top-1 agreement "
            f"{report['top1_agreement']:.4f}")
    return {"path": path, "parity": report}


class ExportStage(Stage):
    name = "export"
    Config = ExportConfig
    reads = ("baseline", "distill", "quantize")

    def reads_in(self, pipeline) -> tuple[str, ...]:
        """The baseline's checkpoint is exported only when `recommend_from` names it."""
        if "baseline" in pipeline.stage(self.name).recommend_from:
            return self.reads
        return tuple(r for r in self.reads if r != "baseline")

    def key_material(self, pipeline) -> dict[str, Any]:
        return tensorrt_key_material(pipeline)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg: ExportConfig = ctx.config
        model, spec = load_model(ctx.path(ctx.outputs["distill"]["checkpoint"]))
        shape = (spec.in_channels, spec.input_size, spec.input_size)
        path = ctx.stage_dir / "student.onnx"
        export_model(ctx, cfg, model, path, shape)
        simplified = cfg.simplify and simplify_onnx(path)
        x = ctx.data.val.sample(range(len(ctx.data.val)), cfg.parity_samples)[0]
        report = parity(predict_logits(model, x).numpy(), onnx_logits(path, x))
        report.update(atol=cfg.atol, min_top1_agreement=cfg.min_top1_agreement)
        report["passed"] = report["max_abs_error"] <= cfg.atol and report["top1_agreement"] >= cfg.min_top1_agreement
        by_length = length_parity(ctx, cfg, model, path)
        if by_length is not None:
            report["sequence_lengths"] = by_length
            report["passed"] = report["passed"] and all(r["passed"] for r in by_length.values())
            ctx.log("parity by sequence length: " + ", ".join(
                f"{length}: {r['max_abs_error']:.1e}" for length, r in by_length.items()))
        outputs = {}
        for key, (name, text) in ctx.task.export_files(ctx.data).items():  # what travels with the model (tokenizer)
            write_text(ctx.stage_dir / name, text)
            outputs[key] = ctx.relative(ctx.stage_dir / name)
        if ctx.has("quantize"):  # Q/DQ ONNX of the quantized student, parity vs its fake-quantized model
            from compress.quantize.strip_to_onnx import export_qdq

            qdq_path = ctx.stage_dir / "student.qdq.onnx"
            report["qdq"] = export_qdq(ctx.path(ctx.outputs["quantize"]["checkpoint"]), qdq_path, x, cfg.opset,
                                       cfg.dynamic_batch, cfg.min_top1_agreement, cfg.simplify)
            form = report["qdq"]["form"]
            ctx.log(f"student.qdq.onnx: {form['quantize_nodes']} activation quantizers, {form.get('weights_stored', 0)} "
                    f"weights stored as integers, top-1 agreement "
                    f"{report['qdq']['top1_agreement']:.4f} with the fake-quantized model")
            report["passed"] = report["passed"] and report["qdq"]["passed"]
            outputs["onnx_qdq"] = ctx.relative(qdq_path)
        if "baseline" in cfg.recommend_from:
            baseline = export_baseline(ctx, cfg, x)
            report["baseline"] = baseline["parity"]
            report["passed"] = report["passed"] and baseline["parity"]["passed"]
            outputs["baseline_onnx"] = ctx.relative(baseline["path"])
        write_json(ctx.stage_dir / "parity.json", report)
        ctx.log(f"student.onnx opset {cfg.opset}{' simplified' if simplified else ''}: max abs error "
                f"{report['max_abs_error']:.2e}, top-1 agreement {report['top1_agreement']:.4f}")
        if not report["passed"]:
            raise StageFailed("export", f"ONNX parity outside tolerance (see {ctx.stage_dir / 'parity.json'})")
        outputs.update({"onnx": ctx.relative(path), "parity": ctx.relative(ctx.stage_dir / "parity.json"),
                        "onnx_sha256": sha256_file(path), "input_shape": list(ctx.data.input_shape),
                        "inputs": ctx.task.input_specs(ctx.data)})
        # TensorRT: FP16 copy + lint (of student.onnx and, when written above, student.qdq.onnx).
        outputs.update(export_for_tensorrt(ctx, path, x))
        return outputs
