"""The detector's training stages: teacher (trained here or loaded), baseline (the student alone) and distill.

Every model is scored the same way (compress.tasks.object_detection.evaluation): letterboxed pixels, raw
predictions, the device's numpy decode + NMS, pycocotools. Each stage keeps its detections on the evaluation
split (test where there is one) so the report's paired bootstrap compares models image by image.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from compress.config import PipelineConfig, Strict
from compress.config.base import NOT_IN_KEY
from compress.core.errors import ConfigError
from compress.stages.contract import Stage, StageContext


class DetTrainConfig(Strict):
    epochs: int = Field(12, ge=1, le=10000)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    grad_clip: float = Field(10.0, gt=0)
    threads: int | None = Field(None, ge=1, json_schema_extra=NOT_IN_KEY)


class DetDistillConfig(DetTrainConfig):
    feature: Literal["pkd", "cwd", "fgd", "none"] = Field(
        "pkd", description="FPN feature imitation: pkd (Pearson, Cao et al. 2022) | cwd (channel-wise, Shu et al. "
                           "2021) | fgd (focal, Yang et al. 2022) | none")
    feature_weight: float = Field(2.0, ge=0)
    tau: float = Field(1.0, gt=0, description="cwd: softmax temperature over positions")
    level_map: list[tuple[int, int]] | None = Field(None, description="(student level, teacher level) pairs; "
                                                                      "unset: levels of equal stride")
    class_weight: float = Field(1.0, ge=0, description="dense classification KD (Hinton, per location)")
    temperature: float = Field(1.0, gt=0)
    score_threshold: float = Field(0.3, gt=0, lt=1, description="locations where the teacher finds an object")
    box_weight: float = Field(1.0, ge=0, description="box distillation: L1 + GIoU weighted by the teacher's score")

    def check(self, pipeline: PipelineConfig) -> tuple[str, str] | None:
        from compress.tasks.object_detection.detection_losses import check_level_map
        from compress.tasks.object_detection.detectors import feature_levels

        if self.level_map is not None:
            student = feature_levels(pipeline.student.model, pipeline.student.kwargs)
            teacher = feature_levels(pipeline.teacher.model, pipeline.teacher.kwargs)
            if student is not None and teacher is not None:
                problem = check_level_map([tuple(p) for p in self.level_map], student, teacher)
                if problem:
                    return "level_map", problem
        return None

    def kd(self):
        from compress.tasks.object_detection.det_fit import DetectionKD

        params = {"tau": self.tau} if self.feature == "cwd" else {}
        return DetectionKD(feature=None if self.feature == "none" else self.feature,
                           feature_weight=self.feature_weight, feature_params=params,
                           level_map=[tuple(p) for p in self.level_map] if self.level_map else None,
                           class_weight=self.class_weight, temperature=self.temperature,
                           score_threshold=self.score_threshold, box_weight=self.box_weight)


class DetBaselineConfig(Strict):
    """The student alone; unset options follow stages.distill, so the two differ only by the teacher."""

    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)


def post_settings(plan):
    from compress.tasks.object_detection.evaluation import PostSettings

    o = plan.options
    return PostSettings(score_threshold=o.score_threshold, iou_threshold=o.iou_threshold,
                        max_detections=o.max_detections)


def fit_options(cfg, seed: int, image_size: int):
    from compress.tasks.object_detection.det_fit import FitOptions

    return FitOptions(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                      warmup_fraction=cfg.warmup_fraction, grad_clip=cfg.grad_clip, seed=seed, image_size=image_size)


def augment_of(plan):
    from compress.tasks.object_detection.detection_data import Augment

    a = plan.options.augment
    return Augment(flip=a.flip, scale=tuple(a.scale), translate=a.translate, color=a.color, mosaic=a.mosaic)


def scored(ctx: StageContext, model, name: str) -> dict[str, Any]:
    """Detect on the evaluation split, save the detections, return {"detections", "split", "summary"}."""
    from compress.tasks.object_detection.evaluation import detect, save_detections, score, torch_predict

    plan = ctx.data
    split = plan.eval_split
    records = plan.splits()[split].images
    found = detect(torch_predict(model), records, plan.options.image_size, post_settings(plan))
    path = ctx.stage_dir / "detections.npz"
    save_detections(found, path)
    summary = score(records, found, plan.class_names, plan.category_ids)
    ctx.log(f"{name} {split} mAP {summary['map']:.3f} (mAP@.5 {summary['map50']:.3f}) on {len(records)} images")
    return {"detections": ctx.relative(path), "split": split, "summary": summary}


def val_scorer(plan):
    """evaluate(model) -> val mAP, for the training loop's choice of epoch."""
    from compress.tasks.object_detection.evaluation import detect, score, torch_predict

    records = plan.splits()["val"].images

    def evaluate(model) -> float:
        found = detect(torch_predict(model), records, plan.options.image_size, post_settings(plan))
        return score(records, found, plan.class_names, plan.category_ids)["map"]

    return evaluate


def model_record(model_name: str, kwargs: dict, num_classes: int, image_size: int) -> dict[str, Any]:
    return {"model": model_name, "kwargs": kwargs, "num_classes": num_classes, "image_size": image_size}


def weights_from(ctx: StageContext, model, state: dict, field: str) -> list[str]:
    """A plain state_dict file into `model`; returns (and logs) the tensors left fresh: a class head of another size."""
    from compress.tasks.object_detection.detectors import load_weights

    try:
        fresh = load_weights(model, state)
    except ValueError as error:
        raise ConfigError(ctx.pipeline.source_file, field, str(error)) from None
    if fresh:
        ctx.log(f"{field}: {len(fresh)} tensors of another shape left to train: {', '.join(fresh)}")
    return fresh


class DetTeacherStage(Stage):
    name = "teacher"

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"teacher": pipeline.teacher.model_dump(mode="json"), "data": pipeline.data.model_dump(mode="json"),
                "seed": pipeline.seed}

    def threads(self, pipeline: PipelineConfig):
        train = pipeline.teacher.train
        return ("teacher.train.threads", train.threads) if train is not None and train.threads else None

    def run(self, ctx: StageContext) -> dict[str, Any]:
        import torch

        from compress.tasks.object_detection.det_fit import train_detector
        from compress.tasks.object_detection.detectors import (build_detector, is_saved_detector, load_detector,
                                                               read_checkpoint, save_detector)

        plan, cfg = ctx.data, ctx.pipeline.teacher
        for line in plan.describe():
            ctx.log(line)
        size, classes = plan.options.image_size, len(plan.class_names)
        spec = model_record(cfg.model, cfg.kwargs, classes, size)
        history = None
        torch.manual_seed(ctx.pipeline.seed)
        saved = read_checkpoint(cfg.checkpoint) if cfg.checkpoint is not None else None
        ours = saved is not None and is_saved_detector(saved)  # a detector this toolchain saved: used as it is
        if ours:
            model, saved_spec = load_detector(cfg.checkpoint)
            if saved_spec["num_classes"] != classes:
                raise ConfigError(ctx.pipeline.source_file, "teacher.checkpoint",
                                  f"the checkpoint detects {saved_spec['num_classes']} classes; the data has {classes}")
            spec = {**saved_spec, "image_size": size}
        else:
            model = build_detector(cfg.model, classes, cfg.kwargs)
            if saved is not None:
                fresh = weights_from(ctx, model, saved, "teacher.checkpoint")
                if fresh and cfg.train is None:
                    raise ConfigError(ctx.pipeline.source_file, "teacher.checkpoint",
                                      f"{len(fresh)} tensors of the file do not fit this data ({fresh[0]}: another "
                                      "number of classes); add teacher.train to fine-tune them")
        if cfg.train is not None and not ours:
            train = cfg.train
            options = DetTrainConfig(epochs=train.epochs, batch_size=train.batch_size, lr=train.lr,
                                     weight_decay=train.weight_decay, grad_clip=train.grad_clip or 10.0)
            history = train_detector(model, plan.splits()["train"].images, plan.splits()["val"].images,
                                     fit_options(options, ctx.pipeline.seed, size), ctx.stage_dir / "training",
                                     val_scorer(plan), ctx.log, augment_of(plan))
        save_detector(model, spec, ctx.stage_dir / "teacher.pt")
        return {"model": ctx.relative(ctx.stage_dir / "teacher.pt"), "spec": spec, **scored(ctx, model, "teacher"),
                "params": sum(p.numel() for p in model.parameters()), "class_names": plan.class_names,
                "category_ids": plan.category_ids, "training": history}


class _StudentStage(Stage):
    reads = ("teacher",)

    def train(self, ctx: StageContext, options_cfg, kd=None) -> dict[str, Any]:
        import torch

        from compress.tasks.object_detection.det_fit import train_detector
        from compress.tasks.object_detection.detectors import (build_detector, is_saved_detector, load_detector,
                                                               read_checkpoint, save_detector)

        plan, cfg = ctx.data, ctx.pipeline.student
        teacher = load_detector(ctx.path(ctx.outputs["teacher"]["model"]))[0] if kd is not None else None
        size, classes = plan.options.image_size, len(plan.class_names)
        torch.manual_seed(ctx.pipeline.seed + 1)
        student = build_detector(cfg.model, classes, cfg.kwargs)
        if cfg.checkpoint is not None:
            saved = read_checkpoint(cfg.checkpoint)
            if is_saved_detector(saved):
                student.load_state_dict(load_detector(cfg.checkpoint)[0].state_dict())
            else:
                weights_from(ctx, student, saved, "student.checkpoint")
        history = train_detector(student, plan.splits()["train"].images, plan.splits()["val"].images,
                                 fit_options(options_cfg, ctx.pipeline.seed, size), ctx.stage_dir / "training",
                                 val_scorer(plan), ctx.log, augment_of(plan), teacher=teacher, kd=kd)
        spec = model_record(cfg.model, cfg.kwargs, classes, size)
        save_detector(student, spec, ctx.stage_dir / "student.pt")
        return {"model": ctx.relative(ctx.stage_dir / "student.pt"), "spec": spec, **scored(ctx, student, self.name),
                "params": sum(p.numel() for p in student.parameters()), "training": history}


class DetBaselineStage(_StudentStage):
    name = "baseline"
    Config = DetBaselineConfig
    optional = True

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"student": pipeline.student.model_dump(mode="json"), "options": self.options(pipeline).model_dump(),
                "data": pipeline.data.model_dump(mode="json"), "seed": pipeline.seed}

    @staticmethod
    def options(pipeline: PipelineConfig) -> DetTrainConfig:
        distill = pipeline.stages.get("distill") or DetDistillConfig()
        own = pipeline.stages.get("baseline") or DetBaselineConfig()
        fields = {k: getattr(distill, k) for k in DetTrainConfig.model_fields}
        fields.update({k: v for k, v in own.model_dump().items() if v is not None})
        return DetTrainConfig(**fields)

    def threads(self, pipeline: PipelineConfig):
        count = self.options(pipeline).threads
        return ("stages.distill.threads", count) if count else None

    def run(self, ctx: StageContext) -> dict[str, Any]:
        return self.train(ctx, self.options(ctx.pipeline))


class DetDistillStage(_StudentStage):
    name = "distill"
    Config = DetDistillConfig

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"student": pipeline.student.model_dump(mode="json"), "data": pipeline.data.model_dump(mode="json"),
                "seed": pipeline.seed}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg: DetDistillConfig = ctx.config
        ctx.log(f"KD: features {cfg.feature} x{cfg.feature_weight:g}, classes x{cfg.class_weight:g} "
                f"(T {cfg.temperature:g}), boxes x{cfg.box_weight:g}, teacher objects above {cfg.score_threshold:g}")
        return self.train(ctx, cfg, cfg.kd())
