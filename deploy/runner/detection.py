"""Detection pre- and post-processing: the one implementation, on the host and on the device.

Torch-free (numpy and Pillow) and Python 3.8-compatible, so the host's evaluation and the device's
`infer` turn the same image into the same pixels and the same raw predictions into the same boxes.
"""

from __future__ import annotations

LETTERBOX_FILL = 114


def letterbox(image, size: int, fill: int = LETTERBOX_FILL):
    """(float32 CHW array in [0, 1], scale): the image scaled so its longer side is `size`, pasted at the top-left
    of a `size` x `size` canvas of grey `fill`. Top-left placement keeps the inverse a single division
    (original = letterboxed / scale), with no offset to carry between host and device."""
    import numpy as np
    from PIL import Image

    image = image.convert("RGB")
    width, height = image.size
    scale = size / max(width, height)
    resized = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
    canvas = Image.new("RGB", (size, size), (fill, fill, fill))
    canvas.paste(resized, (0, 0))
    array = np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return np.ascontiguousarray(array), scale


def box_iou(boxes_a, boxes_b):
    """[N, M] float64 intersection over union of two sets of xyxy boxes. A degenerate box (zero or negative
    width or height) has area 0 and overlaps nothing, rather than giving a negative area or a 0/0."""
    import numpy as np

    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes, scores, iou_threshold: float, max_keep=None):
    """int64 indices of the boxes greedy non-maximum suppression keeps, highest score first: each kept box
    removes the later ones that overlap it by more than `iou_threshold`. Equal scores keep their input order
    (a stable sort), so host and device keep the same boxes from the same predictions. With `max_keep` it stops
    once that many are kept (the greedy order makes the first ones final): an untrained or noisy model's
    thousand candidates then cost max_keep steps, not a thousand."""
    import numpy as np

    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64).reshape(-1), kind="stable")
    keep = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        best = order[0]
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou(boxes[best:best + 1], boxes[rest])[0] <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def empty_detections() -> dict:
    import numpy as np

    return {"boxes": np.zeros((0, 4), dtype=np.float32), "scores": np.zeros((0,), dtype=np.float32),
            "labels": np.zeros((0,), dtype=np.int64)}


def postprocess(predictions, scales, sizes, score_threshold: float = 0.05, iou_threshold: float = 0.6,
                max_detections: int = 100, pre_nms_top_k: int = 1000):
    """Raw predictions [B, A, 4 + C] (xyxy in letterboxed pixels, then C class scores) to one Detections dict per
    image: {"boxes": float32 [K, 4] xyxy in original pixels, "scores": float32 [K], "labels": int64 [K]}, by
    score descending. `scales` and `sizes` ((width, height)) are each image's letterbox scale and original size.

    Every (location, class) with a score >= `score_threshold` is a candidate, so one location may give boxes of
    several classes; the `pre_nms_top_k` best go to class-aware NMS (boxes of different classes never suppress
    each other), the `max_detections` best survivors are kept, divided by the scale and clipped to the image."""
    import numpy as np

    predictions = np.asarray(predictions, dtype=np.float32)
    if predictions.ndim != 3 or predictions.shape[2] < 5:
        raise ValueError(f"predictions must be [B, A, 4 + C] with C >= 1, got shape {predictions.shape}")
    if not len(scales) == len(sizes) == predictions.shape[0]:
        raise ValueError(f"{predictions.shape[0]} images of predictions, {len(scales)} scales, {len(sizes)} sizes")
    results = []
    for prediction, scale, (width, height) in zip(predictions, scales, sizes):
        locations, labels = np.nonzero(prediction[:, 4:] >= score_threshold)
        scores = prediction[locations, 4 + labels]
        order = np.argsort(-scores, kind="stable")[:pre_nms_top_k]
        locations, labels, scores = locations[order], labels[order], scores[order]
        if scores.size == 0:
            results.append(empty_detections())
            continue
        boxes = prediction[locations, :4].astype(np.float64)
        # Class-aware NMS in one pass: each class's boxes are moved to a region of their own, farther apart than
        # any box spans, so boxes of two classes never overlap and never suppress each other.
        span = boxes.max() - boxes.min() + 1.0
        keep = nms(boxes + (labels * span)[:, None], scores, iou_threshold, max_detections)
        boxes = boxes[keep] / scale
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
        results.append({"boxes": boxes.astype(np.float32), "scores": scores[keep].astype(np.float32),
                        "labels": labels[keep].astype(np.int64)})
    return results


def detection_record(file_name, detections: dict, class_names) -> dict:
    """One image's detections as JSON-able data (boxes to 0.1 px, scores to 4 digits: finer is noise)."""
    return {
        "file": str(file_name),
        "detections": [
            {"box": [round(float(v), 1) for v in box], "score": round(float(score), 4), "label": int(label),
             "name": str(class_names[int(label)])}
            for box, score, label in zip(detections["boxes"], detections["scores"], detections["labels"])
        ],
    }


def draw_detections(image, detections: dict, class_names, color=(255, 64, 64)):
    """A copy of the image (RGB) with each box outlined and labelled "name score" in Pillow's default font.

    Drawn from the lowest score up: class-aware NMS may keep boxes of two classes on one object, and the label a
    reader sees on top is then the best one."""
    from PIL import ImageDraw

    canvas = image.convert("RGB")  # a copy, even when the image is RGB already
    draw = ImageDraw.Draw(canvas)
    line = max(1, round(min(canvas.size) / 300))
    found = list(zip(detections["boxes"], detections["scores"], detections["labels"]))
    for box, score, label in sorted(found, key=lambda item: float(item[1])):
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=tuple(color), width=line)
        text = f"{class_names[int(label)]} {float(score):.2f}"
        if hasattr(draw, "textbbox"):  # Pillow >= 8; older Pillow (a device's system package) has textsize
            left, top, right, bottom = draw.textbbox((0, 0), text)
            text_width, text_height = right - left, bottom - top
        else:
            text_width, text_height = draw.textsize(text)
        # Above the box where there is room, else just inside its top edge.
        top = y1 - text_height - 2 if y1 - text_height - 2 >= 0 else y1
        draw.rectangle([x1, top, x1 + text_width + 2, top + text_height + 2], fill=tuple(color))
        draw.text((x1 + 1, top), text, fill=(255, 255, 255))
    return canvas
