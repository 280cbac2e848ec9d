"""quantize (optional): NNCF int8 PTQ of the distilled student, or QAT with the teacher still distilling.

`mode: ptq` calibrates the quantizers on training samples; `mode: qat` does the same, then fine-tunes
the fake-quantized student with loss = alpha * KD(teacher, T) + (1 - alpha) * CE, checkpointing every
epoch like distill so a killed run resumes. The export stage turns the result into a Q/DQ ONNX.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from compress.config import ADDED_LATER, PipelineConfig, TopOneDrop, TrainConfig
from compress.distill.objective import Objective, default_losses
from compress.distill.train import accuracy, fit, predict_logits
from compress.core.errors import ConfigError
from compress.models import load_model, model_outline
from compress.quantize.calibration import calibration_samples
from compress.stages.contract import Stage, StageContext
from compress.tasks.registry import task_for

TRAINING_FIELDS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "schedule",
                   "temperature", "alpha")


class QuantizeConfig(TrainConfig):
    mode: Literal["ptq", "qat"] = "ptq"
    calibration_size: int = Field(300, ge=1, description="training samples used to calibrate the quantizers")
    ignored_scope: list[str] = Field(default_factory=list, description="student module names kept in float")
    preset: Literal["performance", "mixed"] | None = Field(
        None, description="performance: symmetric activations; mixed: asymmetric (NNCF's default: performance)")
    target: Literal["cpu", "tensorrt"] = Field(
        "cpu", description="tensorrt: signed int8 activations and weights, zero point 0, per-channel weights")
    bias_correction: bool = Field(False, description="NNCF fast bias correction after calibration")
    # Accuracy control (ptq, and qat before it fine-tunes): layers return to float until the drop fits.
    max_accuracy_drop: TopOneDrop | None = Field(
        None, gt=0, json_schema_extra=ADDED_LATER,
        description="top-1 drop allowed against the float student (0.005 = half a point): the most sensitive "
                    "layers return to float, one at a time, until it holds")
    max_float_layers: int | None = Field(
        None, ge=0, json_schema_extra=ADDED_LATER,
        description="at most this many layers back in float (default: a fifth of the quantizable layers)")
    ranking_size: int = Field(300, ge=1, json_schema_extra=ADDED_LATER,
                              description="validation samples the per-layer sensitivity is measured on")
    # QAT fine-tuning (mode: qat)
    epochs: int = Field(3, ge=1)
    lr: float = Field(1e-4, gt=0)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the KD term; 1 - alpha weighs cross-entropy")

    def check(self, pipeline: PipelineConfig) -> tuple[str, str] | None:
        refusal = task_for(pipeline).torch_quantization
        if refusal:
            return "mode", refusal
        if self.mode == "ptq":
            training = [name for name in TRAINING_FIELDS if name in self.model_fields_set]
            if training:
                return training[0], "is a QAT option; set mode: qat to fine-tune, or remove it"
        if self.max_accuracy_drop is None:
            unused = [name for name in ("max_float_layers", "ranking_size") if name in self.model_fields_set]
            if unused:
                return unused[0], "is an accuracy-control option: set max_accuracy_drop to use it"
        if self.target == "tensorrt" and self.preset == "mixed":
            return "preset", "target tensorrt needs symmetric activations: use preset performance or leave it out"
        if len(set(self.ignored_scope)) != len(self.ignored_scope):
            return "ignored_scope", "a module is listed twice"
        student = model_outline(task_for(pipeline).outline_spec(pipeline.student.model, pipeline.student.kwargs)) \
            if self.ignored_scope else None
        return self.scope_problem(student, pipeline.student.model) if student is not None else None

    def scope_problem(self, student: torch.nn.Module, model_name: str) -> tuple[str, str] | None:
        """(field, message) for the first `ignored_scope` name that is not a module of `student`."""
        from compress.quantize.nncf_quant import missing_modules

        for index, name in enumerate(self.ignored_scope):
            if missing_modules(student, [name]):
                modules = ", ".join(n for n, _ in student.named_modules() if n)
                return f"ignored_scope[{index}]", f"no module '{name}' in student '{model_name}'; its modules: {modules}"
        return None


class QuantizeStage(Stage):
    name = "quantize"
    Config = QuantizeConfig
    optional = True
    reads = ("teacher", "distill")

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"data": pipeline.data.model_dump(mode="json"), "seed": pipeline.seed}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from compress.quantize.kernels import use_reference_functions
        from compress.quantize.nncf_quant import NotQuantizable, quantize_model, quantizers, quiet_nncf, save_quantized

        cfg: QuantizeConfig = ctx.config
        data = ctx.data
        student, spec = load_model(ctx.path(ctx.outputs["distill"]["checkpoint"]))
        problem = cfg.scope_problem(student, spec.name)  # validate checked the config's outline; this, the model
        if problem:
            raise ConfigError(ctx.pipeline.source_file, f"stages.quantize.{problem[0]}", problem[1])
        quiet_nncf()
        ctx.log(use_reference_functions())
        calibration = calibration_samples(data.train, cfg.calibration_size, ctx.pipeline.seed)
        ctx.log(f"NNCF int8 PTQ ({cfg.target}) calibrating on {len(calibration)} training samples")

        def quantize(float_layers: list[str]) -> torch.nn.Module:
            torch.manual_seed(ctx.pipeline.seed)
            return quantize_model(student, calibration, target=cfg.target, preset=cfg.preset,
                                  ignored_scope=[*cfg.ignored_scope, *float_layers], bias_correction=cfg.bias_correction)

        control = None
        try:
            if cfg.max_accuracy_drop is None:
                quantized = quantize([])
            else:
                control = self._control(ctx, cfg, student, quantize)
                quantized = control.model
        except NotQuantizable as error:
            raise ConfigError(ctx.pipeline.source_file, "student.model", f"'{spec.name}': {error}") from None
        ptq_top1 = control.top1 if control else accuracy(quantized, data.val)  # control scored this very model
        ctx.log(f"{len(quantizers(quantized))} quantizers; PTQ val top-1 {ptq_top1:.4f} "
                f"(fp32 {ctx.outputs['distill']['val_top1']:.4f})")
        outputs: dict[str, Any] = {"accuracy_control": control.summary()} if control else {}
        if cfg.mode == "qat":
            outputs.update(self._fine_tune(ctx, cfg, quantized))
        val_top1 = accuracy(quantized, data.val)
        path = ctx.stage_dir / "student.int8.pt"
        float_layers = control.float_layers if control else []
        save_quantized(path, quantized, spec, {"mode": cfg.mode, "target": cfg.target,
                                               "ignored_scope": [*cfg.ignored_scope, *float_layers]})
        ctx.log(f"int8 student val top-1 {val_top1:.4f}")
        return {"checkpoint": ctx.relative(path), "mode": cfg.mode, "target": cfg.target, "val_top1": val_top1,
                "ptq_val_top1": ptq_top1, "fp32_val_top1": ctx.outputs["distill"]["val_top1"],
                "quantizers": len(quantizers(quantized)), **outputs}

    def _control(self, ctx: StageContext, cfg: QuantizeConfig, student: torch.nn.Module, quantize):
        """Accuracy-controlled PTQ of `student` against its own float top-1 on the validation set."""
        from compress.quantize.accuracy_control import Scorers, control_accuracy
        from compress.quantize.nncf_quant import float_reference, quantizable_layers

        val = ctx.data.val
        order = np.random.default_rng(ctx.pipeline.seed).permutation(len(val))
        ranking_x, ranking_y = val.sample(order, cfg.ranking_size)
        layers = quantizable_layers(student, cfg.ignored_scope)
        ctx.log(f"accuracy control: budget {cfg.max_accuracy_drop:g} top-1 on {len(val)} validation samples, "
                f"{len(layers)} quantizable layers, sensitivity on {len(ranking_y)} of them")
        scorers = Scorers(top1=lambda model: accuracy(model, val),
                          ranking=lambda model: (predict_logits(model, ranking_x).numpy(), ranking_y))
        result = control_accuracy(layers, quantize, scorers, float_reference(student), cfg.max_accuracy_drop,
                                  cfg.max_float_layers, log=ctx.log)
        kept = ", ".join(result.float_layers) or "none"
        ctx.log(f"accuracy control: {'met' if result.met else 'NOT met'}: top-1 {result.top1:.4f}, drop "
                f"{result.drop:.4f} (budget {cfg.max_accuracy_drop:g}); float layers: {kept}; "
                f"{result.layers - len(result.float_layers)} of {result.layers} layers int8")
        return result

    def _fine_tune(self, ctx: StageContext, cfg: QuantizeConfig, quantized: torch.nn.Module) -> dict[str, Any]:
        """QAT+KD: the teacher keeps distilling into the fake-quantized student."""
        data = ctx.data
        teacher, _ = load_model(ctx.path(ctx.outputs["teacher"]["checkpoint"]))
        objective = Objective(default_losses(cfg.temperature, cfg.alpha), quantized, teacher, data.train, cfg,
                              cfg.temperature, file=ctx.pipeline.source_file, section="stages.quantize",
                              log=ctx.log, cache_dir=ctx.stage_dir / "teacher_cache")
        ctx.log(f"QAT+KD for {cfg.epochs} epochs (alpha {cfg.alpha}, T {cfg.temperature})")
        result = fit(quantized, data.train, data.val, cfg, ctx.stage_dir, ctx.pipeline.seed, loss_fn=objective,
                     log=ctx.log)
        objective.close()
        return {"best_epoch": result.best_epoch, "metrics": ctx.relative(ctx.stage_dir / "metrics.jsonl")}
