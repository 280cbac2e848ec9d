"""The detector's export and build stages.

Export writes the three ONNX forms of the teacher and the student (compress.tasks.object_detection.onnx_forms)
and measures parity in boxes: ONNX Runtime's raw predictions and the NMS form's detections against torch's on
held-out images, matched at IoU >= 0.9 (compress.tasks.object_detection.coco_metrics.match_boxes). Build makes
the CPU engines (ONNX Runtime, OpenVINO) from the raw form through the shared engine layer; int8 calibrates on
letterboxed training images and refuses too few of them; OpenVINO int8 with accuracy control reverts layers to
float until the val mAP drop is within the budget. TensorRT is built on the device (deferred, like the image
engines); its form is linted here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from compress.config import PipelineConfig, Strict
from compress.core.errors import ConfigError, StageFailed
from compress.stages.contract import Stage, StageContext

BACKENDS = {"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "fp16", "int8"),
            "tensorrt": ("fp32", "fp16", "int8")}


# ONNX Runtime int8 quantizes the backbone, FPN and head convolutions; the box decoding and the score stay float.
INT8_OP_TYPES = ("Conv", "MaxPool", "AveragePool", "GlobalAveragePool")


class DetExportConfig(Strict):
    parity_images: int = Field(16, ge=1, description="held-out images whose boxes must match torch's")
    min_box_agreement: float = Field(0.99, ge=0, le=1, description="share of torch's boxes the ONNX finds again")
    opset: int = Field(17, ge=11, le=21)


class AccuracyControl(Strict):
    max_map_drop: float = Field(0.01, ge=0, lt=1, description="mAP@[.5:.95] points as a fraction (0.01 = 1 point)")
    images: int = Field(100, ge=8, description="val images NNCF scores each try on")


class DetBuildConfig(Strict):
    targets: list[str] = Field(["onnxruntime:fp32", "openvino:fp32", "openvino:int8"],
                               description="onnxruntime:fp32|int8, openvino:fp32|bf16|fp16|int8, "
                                           "tensorrt:fp32|fp16|int8 (built on the device)")
    calibration_images: int = Field(300, ge=1, description="training images int8 calibrates on")
    min_calibration_images: int = Field(200, ge=1, description="refuse int8 with fewer images than this")
    allow_few_calibration_images: bool = Field(False, description="calibrate on fewer images than the minimum")
    accuracy_control: AccuracyControl | None = Field(None, description="openvino:int8: keep layers in float while "
                                                                      "the val mAP drops more than max_map_drop")
    parity_images: int = Field(16, ge=1)

    @field_validator("targets")
    @classmethod
    def _known(cls, targets: list[str]) -> list[str]:
        for target in targets:
            backend, _, precision = target.partition(":")
            if precision not in BACKENDS.get(backend, ()):
                known = ", ".join(f"{b}:{'|'.join(p)}" for b, p in BACKENDS.items())
                raise ValueError(f"unknown target '{target}'; detectors: {known}")
        if len(set(targets)) != len(targets):
            raise ValueError("a target is listed twice")
        return targets

    def check(self, pipeline: PipelineConfig) -> tuple[str, str] | None:
        if self.accuracy_control is not None and "openvino:int8" not in self.targets:
            return "accuracy_control", "applies to the openvino:int8 target: add it to targets"
        return None


def parity_records(plan, count: int):
    return plan.splits()[plan.eval_split].images[:count]


def box_parity(reference_predict, candidate_predict, records, plan) -> dict[str, Any]:
    """Boxes of `candidate_predict` against `reference_predict` on `records`, and their largest raw differences."""
    from compress.stages.detection.det_training import post_settings
    from compress.tasks.object_detection.coco_metrics import match_boxes
    from compress.tasks.object_detection.evaluation import letterboxed_batches
    from deploy.runner.detection import postprocess

    post = post_settings(plan)
    reference_all, candidate_all, box_diff, score_diff = [], [], 0.0, 0.0
    for batch, chunk, scales in letterboxed_batches(records, plan.options.image_size, 8):
        ref, cand = reference_predict(batch), candidate_predict(batch)
        score_diff = max(score_diff, float(np.abs(ref[..., 4:] - cand[..., 4:]).max()))
        box_diff = max(box_diff, float(np.abs(ref[..., :4] - cand[..., :4]).max()))
        sizes = [(r.width, r.height) for r in chunk]
        reference_all += postprocess(ref, scales, sizes, post.score_threshold, post.iou_threshold,
                                     post.max_detections, post.pre_nms_top_k)
        candidate_all += postprocess(cand, scales, sizes, post.score_threshold, post.iou_threshold,
                                     post.max_detections, post.pre_nms_top_k)
    return {**match_boxes(reference_all, candidate_all), "max_abs_score_diff": score_diff,
            "max_abs_box_diff_px": box_diff, "images": len(records)}


def nms_form_parity(path: Path, model_predict, records, plan) -> dict[str, Any]:
    """The NMS form's detections against the numpy post-processing of torch's predictions, image by image."""
    from compress.stages.detection.det_training import post_settings
    from compress.tasks.object_detection.coco_metrics import match_boxes
    from compress.tasks.object_detection.evaluation import letterboxed_batches
    from compress.tasks.object_detection.onnx_forms import nms_outputs_to_detections
    from deploy.runner.detection import postprocess
    from deploy.runner.sessions import OnnxRuntimeSession

    post = post_settings(plan)
    session = OnnxRuntimeSession(path, providers=["CPUExecutionProvider"])
    reference, candidate = [], []
    for batch, chunk, scales in letterboxed_batches(records, plan.options.image_size, 1):
        size = (chunk[0].width, chunk[0].height)
        reference += postprocess(model_predict(batch), scales, [size], post.score_threshold, post.iou_threshold,
                                 post.max_detections, post.pre_nms_top_k)
        outputs = session.session.run(None, {"images": batch})
        candidate.append(nms_outputs_to_detections(outputs, scales[0], size))
    return match_boxes(reference, candidate)


class DetExportStage(Stage):
    name = "export"
    Config = DetExportConfig
    reads = ("teacher", "distill")

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from compress.stages.detection.det_training import post_settings
        from compress.tasks.object_detection.evaluation import torch_predict
        from compress.tasks.object_detection import onnx_forms
        from compress.tasks.object_detection.detectors import load_detector
        from deploy.runner.sessions import OnnxRuntimeSession

        cfg: DetExportConfig = ctx.config
        plan = ctx.data
        records = parity_records(plan, cfg.parity_images)
        outputs: dict[str, Any] = {}
        for role, stage in (("teacher", "teacher"), ("student", "distill")):
            model, spec = load_detector(ctx.path(ctx.outputs[stage]["model"]))
            raw, nms, trt = (ctx.stage_dir / f"{role}.{form}.onnx" for form in ("raw", "nms", "tensorrt"))
            onnx_forms.export_raw(model, raw, plan.options.image_size, cfg.opset)
            onnx_forms.export_with_nms(model, nms, plan.options.image_size, post_settings(plan), cfg.opset)
            onnx_forms.tensorrt_form(raw, trt, spec["num_classes"], post_settings(plan))
            session = OnnxRuntimeSession(raw, providers=["CPUExecutionProvider"])
            parity = box_parity(torch_predict(model), session.infer, records, plan)
            nms_parity = nms_form_parity(nms, torch_predict(model), records, plan)
            lint = onnx_forms.lint_tensorrt_form(trt)
            ctx.log(f"{role}: ONNX boxes agree {parity['agreement']:.3f} with torch (scores within "
                    f"{parity['max_abs_score_diff']:.1e}); NMS form {nms_parity['agreement']:.3f}; TensorRT form "
                    f"{'clean' if lint['clean'] else 'NOT clean'} ({', '.join(lint['plugins'])})")
            for what, found in (("raw", parity), ("nms", nms_parity)):
                if found["agreement"] < cfg.min_box_agreement:
                    raise StageFailed("export", f"{role}'s {what} ONNX finds {found['agreement']:.3f} of torch's "
                                                f"boxes (needs {cfg.min_box_agreement})")
            outputs[role] = {"raw": ctx.relative(raw), "nms": ctx.relative(nms), "tensorrt": ctx.relative(trt),
                             "parity": parity, "nms_parity": nms_parity, "tensorrt_lint": lint, "spec": spec}
        return {**outputs, "image_size": plan.options.image_size, "post": post_settings(plan).as_dict()}


def calibration_images(ctx: StageContext, cfg: DetBuildConfig) -> np.ndarray:
    """Letterboxed training images for int8 calibration (refused below the minimum unless allowed)."""
    from compress.tasks.object_detection.evaluation import letterboxed_batches

    plan = ctx.data
    train = plan.splits()["train"].images
    wanted = min(cfg.calibration_images, len(train))
    if wanted < cfg.min_calibration_images and not cfg.allow_few_calibration_images:
        raise ConfigError(ctx.pipeline.source_file, "stages.build.calibration_images",
                          f"int8 would calibrate on {wanted} images (train has {len(train)}), fewer than "
                          f"min_calibration_images {cfg.min_calibration_images}: its ranges would be noise; add "
                          "images, or set allow_few_calibration_images: true")
    order = np.random.default_rng(ctx.pipeline.seed).permutation(len(train))[:wanted]
    chosen = [train[i] for i in sorted(order)]
    return np.concatenate([batch for batch, _, _ in letterboxed_batches(chosen, plan.options.image_size, 32)])


def map_metric(plan, records):
    """NNCF's validation function: mAP of a compiled OpenVINO model on the images its items index."""
    from compress.stages.detection.det_training import post_settings
    from compress.tasks.object_detection.evaluation import SplitDetections, score
    from deploy.runner.detection import postprocess

    post = post_settings(plan)

    def metric(compiled, items) -> float:
        found, chosen = SplitDetections(), []
        for feed, indices in items:
            predictions = compiled(feed)[0]
            batch = [records[int(i)] for i in indices]
            scales = [plan.options.image_size / max(r.width, r.height) for r in batch]
            for record, detections in zip(batch, postprocess(predictions, scales, [(r.width, r.height) for r in batch],
                                                              post.score_threshold, post.iou_threshold,
                                                              post.max_detections, post.pre_nms_top_k)):
                found.by_image[record.image_id] = detections
                chosen.append(record)
        return score(chosen, found, plan.class_names, plan.category_ids)["map"]

    return metric


class DetBuildStage(Stage):
    name = "build"
    Config = DetBuildConfig
    reads = ("export",)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        from compress.tasks.object_detection.evaluation import letterboxed_batches, torch_predict
        from compress.tasks.object_detection.detectors import load_detector
        from deploy.engines import ENGINES

        cfg: DetBuildConfig = ctx.config
        plan = ctx.data
        export = ctx.outputs["export"]
        needs_int8 = any(t.endswith(":int8") and not t.startswith("tensorrt") for t in cfg.targets)
        calibration = calibration_images(ctx, cfg) if needs_int8 else None
        control = None
        if cfg.accuracy_control is not None:
            val = plan.splits()["val"].images[:cfg.accuracy_control.images]
            val_x = np.concatenate([b for b, _, _ in letterboxed_batches(val, plan.options.image_size, 32)])
            control = {"max_accuracy_drop": cfg.accuracy_control.max_map_drop, "metric": map_metric(plan, val),
                       "metric_name": "map", "validation": (val_x, np.arange(len(val)))}
        records = parity_records(plan, cfg.parity_images)
        engines: list[dict[str, Any]] = []
        for role in ("teacher", "student"):
            model = load_detector(ctx.path(ctx.outputs["distill" if role == "student" else "teacher"]["model"]))[0]
            for target in cfg.targets:
                backend, _, precision = target.partition(":")
                if role == "teacher" and precision != "fp32":
                    continue  # the teacher is the reference: its fp32 engines time what the student is compared to
                folder = ctx.stage_dir / f"{role}.{backend}.{precision}"
                if backend == "tensorrt":
                    engines.append({"model": role, "backend": backend, "precision": precision,
                                    "status": "deferred to the device", "onnx": export[role]["tensorrt"]})
                    continue
                options: dict[str, Any] = {"calibration": calibration, "int8_op_types": INT8_OP_TYPES} \
                    if precision == "int8" else {}
                if precision == "int8" and backend == "openvino" and control is not None:
                    options.update(accuracy_control={k: v for k, v in control.items() if k != "validation"},
                                   validation=control["validation"])
                engine = ENGINES[backend]()
                built = engine.build(ctx.path(export[role]["raw"]), folder, precision, **options)
                session = engine.load(built.artifact)
                parity = box_parity(torch_predict(model), session.infer, records, plan)
                session.close()
                quantization = built.sidecar.get("quantization", {})
                ctx.log(f"{role} {backend}:{precision}: boxes agree {parity['agreement']:.3f} with torch"
                        + (f"; accuracy control: mAP {quantization['accuracy_control']['float_map']:.3f} -> "
                           f"{quantization['accuracy_control']['map']:.3f}, "
                           f"{len(quantization['accuracy_control']['reverted_ops'])} ops kept in float"
                           if "accuracy_control" in quantization else ""))
                engines.append({"model": role, "backend": backend, "precision": precision, "status": "built",
                                "folder": ctx.relative(folder), "artifact": ctx.relative(built.artifact),
                                "parity": parity, "quantization": quantization,
                                "build_seconds": built.sidecar["build_seconds"]})
        return {"engines": engines, "calibration_images": 0 if calibration is None else len(calibration)}
