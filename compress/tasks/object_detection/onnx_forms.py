"""The three ONNX forms of a detector.

- raw: `images` [B, 3, S, S] in [0, 1] -> `predictions` [B, A, 4 + C] (dynamic batch). The engines are built from
  it (int8 calibrates on it) and the host and device decode + NMS its output in numpy.
- nms: batch 1, post-processing inside: `detections` [1, K, 6] (x1, y1, x2, y2 in letterboxed pixels, score,
  class; rows past `num_detections` are zeros) and `num_detections` [1]. Class-aware NMS is ONNX's
  NonMaxSuppression (torchvision's nms exports to it), K fixed (max_detections). For runtimes a user feeds
  without our runner.
- tensorrt: the raw graph with its output split into boxes and scores feeding TensorRT's EfficientNMS_TRT plugin
  (num_detections, detection_boxes, detection_scores, detection_classes: the form `trtexec` builds and NVIDIA's
  samples read). ONNX Runtime cannot run it (the plugin is TensorRT's), so it is linted here and built on the
  device.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

OPSET = 17


def export_raw(model, path: Path, image_size: int, opset: int = OPSET) -> None:
    example = torch.rand(1, 3, image_size, image_size)
    torch.onnx.export(model.eval(), (example,), str(path), input_names=["images"], output_names=["predictions"],
                      dynamic_axes={"images": {0: "batch"}, "predictions": {0: "batch"}}, opset_version=opset,
                      dynamo=False)


class WithNMS(nn.Module):
    """The detector, then the post-processing of deploy/runner/detection.postprocess for one image."""

    def __init__(self, model, score_threshold: float, iou_threshold: float, max_detections: int, pre_nms_top_k: int):
        super().__init__()
        self.model = model
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        self.max_detections, self.pre_nms_top_k = max_detections, pre_nms_top_k

    def forward(self, images: torch.Tensor):
        from torchvision.ops import nms

        predictions = self.model(images)[0]
        boxes, scores = predictions[:, :4], predictions[:, 4:]
        classes = scores.shape[1]
        flat = scores.reshape(-1)
        top, order = torch.topk(flat, min(self.pre_nms_top_k, flat.shape[0]))
        keep = top >= self.score_threshold
        top, order = top[keep], order[keep]
        labels = order % classes
        chosen = boxes[order // classes]
        # One NMS over all classes: boxes of different classes are moved apart so they never overlap.
        # (The largest coordinate of all boxes: the candidates may be none.)
        offset = labels.to(chosen.dtype).unsqueeze(1) * (boxes.max() + 1)
        kept = nms(chosen + offset, top, self.iou_threshold)[:self.max_detections]
        rows = torch.cat([chosen[kept], top[kept].unsqueeze(1), labels[kept].to(chosen.dtype).unsqueeze(1)], 1)
        count = torch.ones_like(rows[:, 0]).sum().to(torch.int64).reshape(1)  # traced as a count, not a constant
        padded = torch.cat([rows, torch.zeros(self.max_detections, 6, dtype=rows.dtype)], 0)[:self.max_detections]
        return padded.unsqueeze(0), count


def export_with_nms(model, path: Path, image_size: int, post, opset: int = OPSET) -> None:
    wrapped = WithNMS(model.eval(), post.score_threshold, post.iou_threshold, post.max_detections,
                      post.pre_nms_top_k).eval()  # a new wrapper is in training mode: export would restore it
    example = torch.rand(1, 3, image_size, image_size)
    torch.onnx.export(wrapped, (example,), str(path), input_names=["images"],
                      output_names=["detections", "num_detections"], opset_version=opset, dynamo=False)


def nms_outputs_to_detections(outputs, scale: float, size: tuple[int, int]) -> dict:
    """The nms form's outputs of one image as the Detections dict of deploy/runner/detection.postprocess."""
    import numpy as np

    detections, count = outputs
    rows = detections[0][:int(count[0])]
    boxes = rows[:, :4] / scale
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, size[0])
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, size[1])
    return {"boxes": boxes.astype(np.float32), "scores": rows[:, 4].astype(np.float32),
            "labels": rows[:, 5].astype(np.int64)}


def tensorrt_form(raw_path: Path, out_path: Path, num_classes: int, post) -> None:
    """The raw graph + EfficientNMS_TRT (plugin_version 1, box_coding 0: corners, scores already activated)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(raw_path))
    graph = model.graph
    predictions = graph.output[0].name
    starts = {"boxes_start": [0], "boxes_end": [4], "scores_start": [4], "scores_end": [4 + num_classes],
              "slice_axis": [2]}
    for name, value in starts.items():
        graph.initializer.append(helper.make_tensor(f"trt_{name}", TensorProto.INT64, [1], value))
    graph.node.extend([
        helper.make_node("Slice", [predictions, "trt_boxes_start", "trt_boxes_end", "trt_slice_axis"], ["boxes"],
                         name="trt_boxes"),
        helper.make_node("Slice", [predictions, "trt_scores_start", "trt_scores_end", "trt_slice_axis"], ["scores"],
                         name="trt_scores"),
        helper.make_node("EfficientNMS_TRT", ["boxes", "scores"],
                         ["num_detections", "detection_boxes", "detection_scores", "detection_classes"],
                         name="efficient_nms", plugin_version="1", background_class=-1, box_coding=0,
                         iou_threshold=float(post.iou_threshold), max_output_boxes=int(post.max_detections),
                         score_activation=0, score_threshold=float(post.score_threshold)),
    ])
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info("num_detections", TensorProto.INT32, ["batch", 1]),
        helper.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, ["batch", post.max_detections, 4]),
        helper.make_tensor_value_info("detection_scores", TensorProto.FLOAT, ["batch", post.max_detections]),
        helper.make_tensor_value_info("detection_classes", TensorProto.INT32, ["batch", post.max_detections]),
    ])
    onnx.save(model, str(out_path))


def lint_tensorrt_form(path: Path) -> dict:
    """TensorRT's lint of the raw graph, with EfficientNMS_TRT recognised as TensorRT's own plugin."""
    import onnx

    from compress.exporting.trt_lint import lint

    model = onnx.load(str(path))
    plugins = [node for node in model.graph.node if node.op_type == "EfficientNMS_TRT"]
    for node in plugins:
        model.graph.node.remove(node)
    report = lint(model)
    report["plugins"] = [node.op_type for node in plugins]
    return report
