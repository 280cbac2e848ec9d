"""Image classification: pixels in, class logits out (arrays, image files, user datasets).

The record sources and image decoding live in compress.data (shared with any task that reads
images); this package says what image classification does with them: splits normalised with
train statistics, one float32 NCHW input named `input`, top-1 accuracy, and the recorded
preprocessing (resize, crop, mean/std) that a device repeats on raw images.
"""

from __future__ import annotations

from typing import Any

import torch

from compress.config import DataConfig
from compress.config.data import CORPUS_SOURCES, DETECTION_SOURCES, TEXT_SOURCES
from compress.core.errors import ConfigError
from compress.data.dataset import Dataset
from compress.models import ModelSpec
from compress.tasks.task import Geometry, Task
from compress.tasks.image_classification.geometry import declared_geometry


class ImageClassification(Task):
    name = "image-classification"
    hf_auto_class = "AutoModelForImageClassification"

    @classmethod
    def claims(cls, data: DataConfig) -> bool:
        return data.source not in TEXT_SOURCES + CORPUS_SOURCES + DETECTION_SOURCES

    @classmethod
    def check_data(cls, data: DataConfig) -> tuple[str, str] | None:
        if data.source in TEXT_SOURCES:
            return "task", "data.source text holds texts: set task: text-classification (or leave task out)"
        if data.text is not None:
            return "data.text", f"data.text configures a text source; source is '{data.source}'"
        if data.corpus is not None:
            return "data.corpus", f"data.corpus configures a causal LM corpus; source is '{data.source}'"
        if data.detection is not None:
            return "data.detection", f"data.detection configures a detector's data (coco, yolo); source is '{data.source}'"
        return None

    def complete_config(self, pipeline) -> None:
        """`data.mean: model` becomes the teacher's (else the student's) numbers, so the run and bundles record them."""
        if self.data_cfg.mean != "model":
            return
        from compress.models.external import model_statistics

        for role in ("teacher", "student"):
            found = model_statistics(getattr(pipeline, role).model)
            if found is not None:
                self.data_cfg.mean, self.data_cfg.std = found
                return
        raise ConfigError(pipeline.source_file, "data.mean", f"is 'model', but neither {pipeline.teacher.model} nor "
                          f"{pipeline.student.model} says its mean/std (timm:, torchvision:, hf: with a "
                          "preprocessor_config.json do): give the numbers")

    def load_data(self, seed: int) -> Dataset:
        from compress.data import load_dataset

        return load_dataset(self.data_cfg, seed)

    def declared_geometry(self) -> Geometry:
        return declared_geometry(self.data_cfg)

    def declared_class_counts(self) -> dict[str, int] | None:
        from compress.data.fingerprint import class_counts

        return class_counts(self.data_cfg)

    def describe_data(self, data: Dataset) -> list[str]:
        """How the images are read (arrays, or decoded per batch), what was skipped, then sizes and thin classes."""
        lines = []
        if data.image_spec is not None:
            spec = data.image_spec
            steps = (f"resize {spec['resize']}" if spec["resize"] is not None else "own size") + \
                (f", centre crop {spec['crop']}" if spec["crop"] is not None else "")
            workers = self.data_cfg.workers if self.data_cfg.workers is not None else "default"
            lines.append(f"{len(data.train)} train, {len(data.val)} val images decoded per batch "
                         f"({spec['mode']}, {steps}; {workers} loader workers)")
        if data.skipped:
            lines.append(f"skipped {len(data.skipped)} unreadable image(s) (data.skip_bad_images): "
                         f"{', '.join(data.skipped[:3])}{', ...' if len(data.skipped) > 3 else ''}")
        return lines + super().describe_data(data)

    def preprocessing(self, data: Dataset) -> dict[str, Any]:
        return data.preprocessing()

    def model_spec(self, role_cfg, data: Dataset) -> ModelSpec:
        channels, height, _ = data.input_shape
        return ModelSpec(role_cfg.model, channels, data.num_classes, height, dict(role_cfg.kwargs))

    def outline_spec(self, name: str, kwargs: dict[str, Any]) -> ModelSpec:
        return ModelSpec(name, 3, 10, 32, dict(kwargs))

    def input_specs(self, data: Dataset) -> list[dict[str, Any]]:
        return [{"name": "input", "dtype": "float32", "shape": ["batch", *data.input_shape]}]

    def example_inputs(self, data: Dataset, batch: int = 2, length: int | None = None) -> torch.Tensor:
        return torch.randn(batch, *data.input_shape)

    def export(self, model, path, data: Dataset, opset: int, dynamic: bool, shape=None) -> None:
        from compress.exporting.torch_to_onnx import export_onnx

        export_onnx(model, data.input_shape or shape, path, opset, dynamic)
