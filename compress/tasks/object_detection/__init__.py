"""The object-detection task: a detector distilled into a small one, kept accurate through int8, run on the device.

Its stages are its own (compress.stages.detection): training regresses boxes, the measure is COCO mAP
(pycocotools), and the exported graph gives raw per-location boxes and scores that the host and the device decode
and suppress with the same numpy code (deploy/runner/detection.py). This package holds what those stages use:
the records (COCO JSON, YOLO layout), the dataset and its augmentation, the detector, its loss, the KD losses, the
training loop and the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compress.config import DataConfig
from compress.config.data import DETECTION_SOURCES, DetectionConfig
from compress.core.errors import ConfigError, UsageError
from compress.tasks.task import Task

# Options of the other tasks a detector's data cannot use (field -> the value that means unset).
FOREIGN_OPTIONS = {"text": None, "corpus": None, "augment": None, "image_size": None, "eval_resize": None,
                   "transfer": None, "mean": None, "std": None, "grayscale": False}


@dataclass
class DetectionPlan:
    """What the config says of the data; the annotation files are read once, when a stage first asks."""

    data_cfg: DataConfig
    options: DetectionConfig
    seed: int
    config_file: str
    _splits: dict[str, Any] | None = field(default=None, repr=False)

    def splits(self) -> dict[str, Any]:
        """{"train", "val"[, "test"]: DetectionSet}, read and checked once."""
        if self._splits is None:
            from compress.tasks.object_detection.detection_splits import check_channels, load_splits

            cfg = self.data_cfg
            splits = load_splits(cfg.source, cfg.path, cfg.val_path, cfg.test_path, cfg.val_fraction,
                                 cfg.test_fraction, self.seed, self.options.images, self.options.names,
                                 self.config_file)
            check_channels([r for s in splits.values() for r in s.images], cfg.channels, self.config_file,
                           "data.path")
            self._splits = splits
        return self._splits

    @property
    def class_names(self) -> list[str]:
        return self.splits()["train"].class_names

    @property
    def category_ids(self) -> list[int]:
        return self.splits()["train"].category_ids

    @property
    def eval_split(self) -> str:
        return "test" if "test" in self.splits() else "val"

    def describe(self) -> list[str]:
        splits = self.splits()
        sizes = ", ".join(f"{len(s.images)} {name}" for name, s in splits.items())
        boxes = sum(len(r.boxes) for r in splits["train"].images)
        empty = sum(len(r.boxes) == 0 for r in splits["train"].images)
        return [f"{sizes} images, {len(self.class_names)} classes; train: {boxes} boxes, {empty} images without boxes",
                f"letterboxed to {self.options.image_size} px"]


class ObjectDetection(Task):
    name = "object-detection"
    metric = "map"
    hf_auto_class = "AutoModelForObjectDetection"
    torch_quantization = ("a detector is quantized when its engines are built: openvino:int8 (NNCF, accuracy "
                          "control on mAP) or onnxruntime:int8 in stages.build.targets")
    random_views = "a detector's augmentation moves its boxes too: the stage's own augmentation applies"
    checks_models_itself = True

    @classmethod
    def claims(cls, data: DataConfig) -> bool:
        return data.source in DETECTION_SOURCES

    @classmethod
    def check_data(cls, data: DataConfig) -> tuple[str, str] | None:
        if data.source not in DETECTION_SOURCES:
            return "data.source", f"a detector reads boxes: source coco (COCO JSON) or yolo, not '{data.source}'"
        for option, unset in FOREIGN_OPTIONS.items():
            if getattr(data, option) != unset:
                return f"data.{option}", "not an option of a detector's data (see data.detection)"
        return None

    @staticmethod
    def check_model_name(name: str) -> str | None:
        from compress.tasks.object_detection.detectors import check_detector_name

        return check_detector_name(name)

    @property
    def options(self) -> DetectionConfig:
        return self.data_cfg.detection or DetectionConfig()

    def load_data(self, seed: int) -> DetectionPlan:
        return DetectionPlan(self.data_cfg, self.options, seed, getattr(self, "config_file", "pipeline.yaml"))

    def describe_data(self, data: DetectionPlan) -> list[str]:
        return data.describe()

    def complete_config(self, pipeline) -> None:
        self.config_file = pipeline.source_file
        for role in ("teacher", "student"):
            checkpoint = getattr(pipeline, role).checkpoint
            if checkpoint is not None and checkpoint.suffix not in (".pt", ".pth"):
                raise ConfigError(pipeline.source_file, f"{role}.checkpoint",
                                  "a detector checkpoint is a .pt saved by this toolchain (stages/teacher/teacher.pt) "
                                  "or a torch state_dict file (.pt, .pth: torchvision's own)")
        if pipeline.student.init_from_teacher is not None:
            raise ConfigError(pipeline.source_file, "student.init_from_teacher",
                              "applies to Transformers; a detector student starts from its own config")

    def check_model(self, role: str, role_cfg, data) -> None:
        from compress.tasks.object_detection.detectors import check_detector_name

        from compress.tasks.object_detection.detectors import input_size_problem

        problem = check_detector_name(role_cfg.model)
        if problem:
            raise ConfigError(getattr(self, "config_file", "pipeline.yaml"), f"{role}.model", problem)
        try:
            problem = input_size_problem(role_cfg.model, role_cfg.kwargs, self.options.image_size)
        except UsageError as error:
            field = f"{role}.kwargs" if "kwargs" in str(error) else f"{role}.model"
            raise ConfigError(getattr(self, "config_file", "pipeline.yaml"), field, str(error)) from None
        if problem:
            raise ConfigError(getattr(self, "config_file", "pipeline.yaml"), "data.detection.image_size", problem)

    def val_inputs(self, data: DetectionPlan, count: int):
        """The first `count` val images letterboxed, as the raw ONNX and its engines take them."""
        import numpy as np

        from compress.tasks.object_detection.evaluation import letterboxed_batches

        records = data.splits()["val"].images[:count]
        return np.concatenate([batch for batch, _, _ in letterboxed_batches(records, self.options.image_size, 16)])

    def validate_models(self, pipeline, data) -> list[str]:
        """Teacher and student built on the meta device: their FPN levels and widths, and the KD level pairs and
        adapters stages.distill would train (a level map out of range is refused naming it)."""
        import torch

        from compress.tasks.object_detection.detection_losses import check_level_map, level_pairs
        from compress.tasks.object_detection.detectors import build_detector

        classes = len(data.class_names)
        lines, models = [], {}
        for role in ("teacher", "student"):
            cfg = getattr(pipeline, role)
            with torch.device("meta"):
                models[role] = build_detector(cfg.model, classes, cfg.kwargs)
            params = sum(p.numel() for p in models[role].parameters())
            lines.append(f"{role} {cfg.model}: feature strides {list(models[role].strides)}, channels "
                         f"{list(models[role].feature_channels)}, {params / 1e6:.2f}M parameters")
        distill = pipeline.stages.get("distill")
        if distill is not None and getattr(distill, "feature", "none") != "none":
            student, teacher = models["student"], models["teacher"]
            pairs = [tuple(p) for p in distill.level_map] if distill.level_map else \
                level_pairs(list(student.strides), list(teacher.strides))
            problem = check_level_map(pairs, len(student.strides), len(teacher.strides))
            if problem:
                raise ConfigError(pipeline.source_file, "stages.distill.level_map", problem)
            widths = [(student.feature_channels[i], teacher.feature_channels[j]) for i, j in pairs]
            adapted = sorted({f"{a} -> {b}" for a, b in widths if a != b})
            adapters = f"1x1 adapters {', '.join(adapted)} channels" if adapted else "no adapters"
            lines.append(f"KD {distill.feature} on level pairs {pairs} (student, teacher), {adapters}")
        if distill is not None and (distill.class_weight or distill.box_weight):
            student, teacher = models["student"], models["teacher"]
            pairs = [tuple(p) for p in distill.level_map] if distill.level_map else \
                level_pairs(list(student.strides), list(teacher.strides))
            shared = [(i, j) for i, j in pairs if student.strides[i] == teacher.strides[j]]
            lines.append(f"KD on classes and boxes at the locations of level pairs {shared}" if shared else
                         "KD on classes and boxes: off (no student level has a teacher level of its stride)")
        return lines

    def results_fields(self, length, grid) -> dict[str, Any]:
        return {"task": self.name}
