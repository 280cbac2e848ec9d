"""Detection post-processing, as host and device both run it (deploy/runner/detection.py): raw predictions
[B, A, 4 + C] in letterboxed pixels to boxes in the original image, then JSON records and drawn images."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from deploy.runner.detection import box_iou, detection_record, draw_detections, nms, postprocess

NAMES = ["cat", "dog", "bird"]


def predictions(rows, classes: int = 3, locations: int = 8) -> np.ndarray:
    """One image's [1, A, 4 + C] predictions: the given (box, {class: score}) rows, then locations scoring 0."""
    out = np.zeros((1, locations, 4 + classes), dtype=np.float32)
    for index, (box, scores) in enumerate(rows):
        out[0, index, :4] = box
        for label, score in scores.items():
            out[0, index, 4 + label] = score
    return out


def test_box_iou_by_hand():
    a = [[0, 0, 10, 10]]
    b = [[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10], [3, 3, 3, 8]]  # half over, apart, same, degenerate
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0.0, 1.0, 0.0]])


def test_nms_keeps_the_best_of_each_overlapping_group():
    boxes = np.array([[0, 0, 10, 10],      # 0: score .6, under box 1 (IoU 81/119 = .68)
                      [1, 1, 11, 11],      # 1: best of the first group
                      [20, 20, 30, 30],    # 2: alone
                      [0, 0, 10, 5],       # 3: IoU .5 with box 0, 36/114 = .32 with box 1
                      [21, 20, 31, 30]],   # 4: IoU 90/110 = .82 with box 2, which scores higher
                     dtype=np.float32)
    scores = np.array([0.6, 0.9, 0.8, 0.3, 0.7], dtype=np.float32)
    assert nms(boxes, scores, 0.6).tolist() == [1, 2, 3]
    assert nms(boxes, scores, 0.3).tolist() == [1, 2]  # box 3 (IoU .36 with box 1) now goes too
    assert nms(boxes, scores, 0.9).tolist() == [1, 2, 4, 0, 3]  # nothing overlaps more than .9: all, by score
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_postprocess_returns_boxes_in_original_pixels_clipped_to_the_image():
    # A 200 x 100 image letterboxed to 64: scale 0.32, the image fills the top 32 rows.
    raw = predictions([([16, 8, 32, 16], {1: 0.9}),        # 50..100 x 25..50 in the original
                       ([-8, 0, 80, 40], {0: 0.5})])      # runs past every edge: clipped to 0..200 x 0..100
    (found,) = postprocess(raw, scales=[0.32], sizes=[(200, 100)])
    np.testing.assert_allclose(found["boxes"], [[50, 25, 100, 50], [0, 0, 200, 100]], rtol=1e-6)
    np.testing.assert_allclose(found["scores"], [0.9, 0.5])
    assert found["labels"].tolist() == [1, 0]
    assert (found["boxes"].dtype, found["scores"].dtype, found["labels"].dtype) == (np.float32, np.float32, np.int64)


def test_postprocess_nms_is_per_class():
    box = [10, 10, 30, 30]
    raw = predictions([(box, {0: 0.9, 2: 0.6}),            # one location, two classes: both kept
                       ([11, 10, 31, 30], {0: 0.8}),       # same class as the best, IoU .90: suppressed
                       ([11, 10, 31, 30], {1: 0.7})])      # another class at the same place: kept
    (found,) = postprocess(raw, scales=[1.0], sizes=[(64, 64)])
    assert found["labels"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(found["scores"], [0.9, 0.7, 0.6])


def test_postprocess_thresholds_top_k_and_max_detections():
    rows = [([10 * i, 0, 10 * i + 8, 8], {0: score}) for i, score in enumerate([0.3, 0.9, 0.04, 0.05, 0.7])]
    raw = predictions(rows)
    (found,) = postprocess(raw, [1.0], [(100, 100)])
    np.testing.assert_allclose(found["scores"], [0.9, 0.7, 0.3, 0.05])  # 0.04 is under the 0.05 threshold
    (found,) = postprocess(raw, [1.0], [(100, 100)], max_detections=2)
    np.testing.assert_allclose(found["scores"], [0.9, 0.7])
    (found,) = postprocess(raw, [1.0], [(100, 100)], pre_nms_top_k=3)
    np.testing.assert_allclose(found["scores"], [0.9, 0.7, 0.3])


def test_postprocess_without_detections_gives_empty_arrays_per_image():
    raw = np.concatenate([predictions([]), predictions([([0, 0, 5, 5], {2: 0.5})])])
    empty, one = postprocess(raw, [1.0, 0.5], [(10, 10), (20, 20)])
    assert empty["boxes"].shape == (0, 4) and empty["scores"].shape == (0,) and empty["labels"].shape == (0,)
    assert (empty["boxes"].dtype, empty["labels"].dtype) == (np.float32, np.int64)
    np.testing.assert_allclose(one["boxes"], [[0, 0, 10, 10]])


def test_detection_record_is_rounded_json():
    found = {"boxes": np.array([[1.2345, 2.06, 30.449, 40.0]], dtype=np.float32),
             "scores": np.array([0.876543], dtype=np.float32), "labels": np.array([2])}
    record = detection_record("a/b.jpg", found, NAMES)
    assert record == {"file": "a/b.jpg",
                      "detections": [{"box": [1.2, 2.1, 30.4, 40.0], "score": 0.8765, "label": 2, "name": "bird"}]}
    json.dumps(record)
    assert detection_record("c.png", postprocess(predictions([]), [1.0], [(4, 4)])[0], NAMES) == {
        "file": "c.png", "detections": []}


def test_draw_detections_draws_on_a_copy_of_the_same_size():
    image = Image.new("RGB", (120, 80), (0, 0, 0))
    found = {"boxes": np.array([[10, 30, 60, 70], [0, 0, 5, 5]], dtype=np.float32),
             "scores": np.array([0.9, 0.2], dtype=np.float32), "labels": np.array([1, 0])}
    drawn = draw_detections(image, found, NAMES)
    assert drawn.size == image.size and drawn.mode == "RGB"
    pixels = np.asarray(drawn)
    assert (pixels != 0).any(axis=2).sum() > 200  # outlines and labels
    assert tuple(pixels[50, 10]) == (255, 64, 64)  # the left edge of the first box
    assert not np.asarray(image).any()  # the original is untouched
    gray = draw_detections(Image.new("L", (40, 40)), found, NAMES, color=(0, 255, 0))
    assert gray.mode == "RGB" and tuple(np.asarray(gray)[35, 10]) == (0, 255, 0)
