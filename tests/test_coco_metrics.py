"""COCO mAP by pycocotools on records and Detections dicts, the paired bootstrap of two models' mAP difference,
and the box parity of two engines (compress/tasks/object_detection/coco_metrics.py).

The hand cases follow COCOeval's rules: precision is read at 101 recall points (0, 0.01, ..., 1) from the
precision envelope, and a recall point past the highest recall reached scores 0."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from compress.tasks.object_detection.coco_metrics import (_per_image_evaluation, _resampled_map, coco_detections,
                                                          coco_ground_truth, evaluate_map, match_boxes,
                                                          paired_bootstrap_map)

NAMES = ["cat", "dog", "bird"]
CATEGORY_IDS = [1, 3, 7]  # COCO ids need not be contiguous


def image(image_id: int, boxes, labels, width: int = 100, height: int = 100):
    """An ImageRecord's fields (image_id, path, width, height, boxes xyxy, labels)."""
    return SimpleNamespace(image_id=image_id, path=f"{image_id}.jpg", width=width, height=height,
                           boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                           labels=np.asarray(labels, dtype=np.int64))


def detections(boxes, scores, labels) -> dict:
    return {"boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "scores": np.asarray(scores, dtype=np.float32), "labels": np.asarray(labels, dtype=np.int64)}


def perfect(images) -> dict:
    return {im.image_id: detections(im.boxes, np.linspace(0.9, 0.5, len(im.labels)), im.labels) for im in images}


IMAGES = [image(1, [[10, 10, 50, 50], [60, 60, 90, 95]], [0, 1]),
          image(2, [[0, 0, 30, 20]], [1]),
          image(5, [], [])]  # a background image


def test_ground_truth_and_results_in_coco_form():
    coco = coco_ground_truth(IMAGES, NAMES, CATEGORY_IDS)
    assert sorted(coco.getImgIds()) == [1, 2, 5] and sorted(coco.getCatIds()) == CATEGORY_IDS
    first = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[1]
    assert first["bbox"] == [60, 60, 30, 35] and first["area"] == 30 * 35 and first["category_id"] == 3
    assert first["iscrowd"] == 0 and first["id"] >= 1
    assert coco_detections({2: detections([[1, 2, 4, 8]], [0.5], [2])}, CATEGORY_IDS) == [
        {"image_id": 2, "category_id": 7, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.5}]


def test_perfect_detections_score_1():
    result = evaluate_map(IMAGES, perfect(IMAGES), NAMES, CATEGORY_IDS)
    assert result["map"] == pytest.approx(1.0) and result["map50"] == pytest.approx(1.0)
    assert result["map75"] == pytest.approx(1.0)
    assert result["per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0), "bird": None}  # no bird
    assert result["images"] == 3


def test_one_of_two_boxes_found():
    # Recall 0.5 at precision 1, at every IoU threshold: the recall points 0 .. 0.50 (51 of the 101) score 1,
    # the 50 past 0.5 score 0: AP = 51/101, not 0.5.
    truth = [image(1, [[10, 10, 40, 40], [50, 50, 90, 90]], [0, 0])]
    result = evaluate_map(truth, {1: detections([[10, 10, 40, 40]], [0.9], [0])}, NAMES, CATEGORY_IDS)
    assert result["map"] == pytest.approx(51 / 101) and result["map50"] == pytest.approx(51 / 101)
    assert result["per_class"]["cat"] == pytest.approx(51 / 101)


def test_a_better_scored_false_positive_halves_precision():
    # Detections by score: a miss (precision 0 at recall 0), then the box (precision 1/2 at recall 1). The
    # envelope makes the precision 1/2 at every recall point: AP = 0.5.
    truth = [image(1, [[10, 10, 40, 40]], [0])]
    found = detections([[60, 60, 90, 90], [10, 10, 40, 40]], [0.9, 0.8], [0, 0])
    assert evaluate_map(truth, {1: found}, NAMES, CATEGORY_IDS)["map"] == pytest.approx(0.5)


def test_a_loose_box_counts_at_the_low_iou_thresholds_only():
    # IoU 0.62 (a 20 x 12.4 box inside a 20 x 20 one): a match at the thresholds .50, .55, .60 of the ten.
    truth = [image(1, [[0, 0, 20, 20]], [2])]
    result = evaluate_map(truth, {1: detections([[0, 0, 20, 12.4]], [0.7], [2])}, NAMES, CATEGORY_IDS)
    assert (result["map50"], result["map75"]) == (pytest.approx(1.0), pytest.approx(0.0))
    assert result["map"] == pytest.approx(0.3)
    assert result["per_class"] == {"cat": None, "dog": None, "bird": pytest.approx(0.3)}


def test_no_detections_score_0():
    result = evaluate_map(IMAGES, {}, NAMES, CATEGORY_IDS)
    assert (result["map"], result["map50"], result["map75"]) == (0.0, 0.0, 0.0)
    assert result["per_class"] == {"cat": 0.0, "dog": 0.0, "bird": None}
    empty = {im.image_id: detections([], [], []) for im in IMAGES}
    assert evaluate_map(IMAGES, empty, NAMES, CATEGORY_IDS)["map"] == 0.0


def test_a_subset_of_the_images_and_a_prebuilt_ground_truth():
    coco = coco_ground_truth(IMAGES, NAMES, CATEGORY_IDS)
    found = perfect(IMAGES)
    found[1] = detections([], [], [])  # image 1 missed entirely: only image 2 is perfect
    result = evaluate_map(coco, found, NAMES, CATEGORY_IDS, image_ids=[2])
    assert result["map"] == pytest.approx(1.0) and result["images"] == 1
    assert result["per_class"]["cat"] is None  # image 2 has no cat
    with pytest.raises(ValueError, match="image ids"):
        evaluate_map(coco, {9: found[2]}, NAMES, CATEGORY_IDS)


def scene(count: int = 30, seed: int = 0):
    """`count` images of 1-4 boxes, and a model that finds them all (with jittered boxes and scores)."""
    rng = np.random.default_rng(seed)
    truth, found = [], {}
    for image_id in range(1, count + 1):
        k = int(rng.integers(1, 5))
        corner = rng.uniform(0, 300, (k, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(20, 100, (k, 2))], axis=1)
        labels = rng.integers(0, 2, k)
        truth.append(image(image_id, boxes, labels, 400, 400))
        found[image_id] = detections(boxes + rng.normal(0, 2, boxes.shape), rng.uniform(0.3, 1, k), labels)
    return truth, found


def test_bootstrap_of_a_model_against_itself_is_exactly_0():
    truth, found = scene()
    result = paired_bootstrap_map(truth, NAMES, CATEGORY_IDS, found, found, rounds=50)
    assert (result["difference"], result["low"], result["high"]) == (0.0, 0.0, 0.0)
    assert result["rounds"] == 50 and result["a"] == result["b"] > 0.5


def test_bootstrap_of_a_clearly_better_model_is_positive():
    truth, found = scene()
    # The worse model misses every other image and draws its boxes 15 px off.
    worse = {i: detections(d["boxes"] + 15, d["scores"], d["labels"]) if i % 2 else detections([], [], [])
             for i, d in found.items()}
    result = paired_bootstrap_map(truth, NAMES, CATEGORY_IDS, found, worse, rounds=100, seed=1)
    full = evaluate_map(truth, found, NAMES, CATEGORY_IDS)["map"] - evaluate_map(truth, worse, NAMES,
                                                                                  CATEGORY_IDS)["map"]
    assert result["difference"] == pytest.approx(full)
    assert 0 < result["low"] <= result["difference"] <= result["high"]


def test_a_bootstrap_round_is_cocoeval_on_the_resampled_dataset():
    """A round reuses pycocotools' per-image results; it must equal COCOeval on the resampled images under fresh
    ids, repeats included (the definition of the resample)."""
    truth, found = scene(12, seed=3)
    found[4] = detections([], [], [])
    found[7] = detections([[0, 0, 50, 50]], [0.95], [1])  # a false positive above the true boxes
    picks = np.array([0, 0, 3, 3, 3, 6, 11, 2, 9, 9, 5, 1])  # indices into the images sorted by id
    ordered = sorted(truth, key=lambda im: im.image_id)
    resampled = [image(number, ordered[i].boxes, ordered[i].labels, 400, 400) for number, i in enumerate(picks, 1)]
    resampled_found = {number: found[ordered[i].image_id] for number, i in enumerate(picks, 1)}
    expected = evaluate_map(resampled, resampled_found, NAMES, CATEGORY_IDS)["map"]
    evaluation = _per_image_evaluation(coco_ground_truth(truth, NAMES, CATEGORY_IDS), found, CATEGORY_IDS)
    assert _resampled_map(evaluation, picks) == pytest.approx(expected, abs=1e-12)
    assert _resampled_map(evaluation, np.arange(12)) == pytest.approx(
        evaluate_map(truth, found, NAMES, CATEGORY_IDS)["map"], abs=1e-12)


def test_match_boxes_pairs_boxes_of_the_same_label():
    reference = detections([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], [0.9, 0.8, 0.4], [0, 1, 1])
    candidate = detections([[0, 0, 10, 10.2],   # IoU .98 with the first: matched, score .85
                            [20, 20, 40, 40],   # exact, but labelled 0: no match for the second
                            [50, 50, 60, 60],   # matched, score .45
                            [70, 70, 80, 80]],  # an extra box
                           [0.85, 0.8, 0.45, 0.3], [0, 0, 1, 1])
    result = match_boxes(reference, candidate)
    assert (result["reference_boxes"], result["candidate_boxes"], result["matched"]) == (3, 4, 2)
    assert result["agreement"] == pytest.approx(2 / 4)
    assert result["score_abs_diff_max"] == pytest.approx(0.05, abs=1e-6)
    assert result["score_abs_diff_mean"] == pytest.approx(0.05, abs=1e-6)
    assert match_boxes(reference, candidate, iou=0.99)["matched"] == 1  # .98 no longer matches


def test_match_boxes_takes_each_candidate_once():
    reference = detections([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])
    candidate = detections([[0, 0, 10, 10]], [0.7], [0])
    result = match_boxes(reference, candidate)
    assert result["matched"] == 1 and result["agreement"] == 0.5
    assert result["score_abs_diff_max"] == pytest.approx(0.2, abs=1e-6)


def test_match_boxes_aggregates_over_images():
    none = detections([], [], [])
    assert match_boxes(none, none) == {"reference_boxes": 0, "candidate_boxes": 0, "matched": 0, "agreement": 1.0,
                                       "score_abs_diff_max": 0.0, "score_abs_diff_mean": 0.0}
    one = detections([[0, 0, 10, 10]], [0.5], [2])
    shifted = detections([[0, 0, 10, 10]], [0.6], [2])
    over_list = match_boxes([one, one, none], [shifted, none, none])
    assert (over_list["reference_boxes"], over_list["candidate_boxes"], over_list["matched"]) == (2, 1, 1)
    assert over_list["agreement"] == 0.5
    assert over_list["score_abs_diff_mean"] == pytest.approx(0.1, abs=1e-6)
    by_id = match_boxes({1: one, 2: one}, {1: shifted, 3: one})  # image 2 and 3: found by one side only
    assert (by_id["reference_boxes"], by_id["candidate_boxes"], by_id["matched"]) == (2, 2, 1)
    with pytest.raises(ValueError):
        match_boxes([one], [one, one])


def test_one_models_interval_holds_its_map_and_is_a_point_for_a_perfect_model():
    from compress.tasks.object_detection.coco_metrics import bootstrap_map, evaluate_map

    images = [SimpleNamespace(image_id=i + 1, path=f"{i}.png", width=100, height=100,
                              boxes=np.array([[10.0, 10.0, 50.0, 50.0]], np.float32), labels=np.array([i % 2]))
              for i in range(12)]
    perfect = {r.image_id: {"boxes": r.boxes.copy(), "scores": np.array([0.9], np.float32), "labels": r.labels.copy()}
               for r in images}
    assert bootstrap_map(images, ["a", "b"], [1, 2], perfect, rounds=20) == \
        {"map": 1.0, "low": 1.0, "high": 1.0, "rounds": 20}
    half = {k: v for k, v in perfect.items() if k % 3}  # two images in three found, of both classes
    found = bootstrap_map(images, ["a", "b"], [1, 2], half, rounds=100, seed=1)
    assert found["map"] == pytest.approx(evaluate_map(images, half, ["a", "b"], [1, 2])["map"])
    assert found["low"] < found["map"] < found["high"]
