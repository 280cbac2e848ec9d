"""Detections of a model or an engine on a split, scored by pycocotools.

Every artifact goes through the same path: letterboxed pixels (deploy.runner.detection.letterbox), the raw
[B, A, 4 + C] predictions, the numpy decode + NMS of the device (postprocess), COCO mAP. So the torch model, the
ONNX Runtime and OpenVINO engines and the device differ only in what computes the predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from deploy.runner.detection import letterbox, postprocess

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass
class PostSettings:
    """Decode and NMS settings: recorded in the run and shipped to the device, so both keep the same boxes."""

    score_threshold: float = 0.05
    iou_threshold: float = 0.6
    max_detections: int = 100
    pre_nms_top_k: int = 1000

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SplitDetections:
    by_image: dict[int, dict] = field(default_factory=dict)

    def count(self) -> int:
        return sum(len(d["scores"]) for d in self.by_image.values())


def letterboxed_batches(records, size: int, batch_size: int):
    """(float32 [B, 3, size, size], records of the batch, scales), opening one image at a time."""
    from PIL import Image

    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        arrays, scales = [], []
        for record in chunk:
            with Image.open(record.path) as image:
                array, scale = letterbox(image, size)
            arrays.append(array)
            scales.append(scale)
        yield np.stack(arrays), chunk, scales


def detect(predict: Predict, records, size: int, post: PostSettings, batch_size: int = 16) -> SplitDetections:
    found = SplitDetections()
    for batch, chunk, scales in letterboxed_batches(records, size, batch_size):
        predictions = predict(batch)
        sizes = [(r.width, r.height) for r in chunk]
        for record, detections in zip(chunk, postprocess(predictions, scales, sizes, post.score_threshold,
                                                          post.iou_threshold, post.max_detections,
                                                          post.pre_nms_top_k)):
            found.by_image[record.image_id] = detections
    return found


def torch_predict(model) -> Predict:
    import torch

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).numpy()

    return predict


def score(records, detections: SplitDetections, class_names, category_ids) -> dict:
    """COCO mAP@[.5:.95], mAP@.5, mAP@.75 and per-class AP of `detections` on `records` (pycocotools)."""
    from compress.tasks.object_detection.coco_metrics import coco_ground_truth, evaluate_map

    truth = coco_ground_truth(records, class_names, category_ids)
    return evaluate_map(truth, detections.by_image, class_names, category_ids)


def save_detections(detections: SplitDetections, path) -> None:
    """One npz: per image its boxes, scores and labels (what the report's paired bootstrap and parity read)."""
    from compress.core.fileio import atomic_path

    arrays = {}
    for image_id, found in detections.by_image.items():
        for key in ("boxes", "scores", "labels"):
            arrays[f"{image_id}/{key}"] = found[key]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)


def load_detections(path) -> SplitDetections:
    found = SplitDetections()
    with np.load(path) as data:
        for name in data.files:
            image_id, key = name.split("/")
            found.by_image.setdefault(int(image_id), {})[key] = data[name]
    return found
