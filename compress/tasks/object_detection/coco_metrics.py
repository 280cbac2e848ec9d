"""COCO box mAP by pycocotools, a paired bootstrap of the mAP difference of two models, and box parity of engines.

The mAP is pycocotools' own (COCOeval, bbox), never a re-implementation: it is the number users compare with
published results, and its details (101 recall points, crowd and area rules, 100 detections per image) are
easy to get subtly wrong. Ground truth and detections are built in memory (COCO() + dataset + createIndex),
so no JSON file is written and pycocotools' progress prints are silenced.

Detections are the dicts of deploy/runner/detection.py's `postprocess`: {"boxes": float32 [K, 4] xyxy in
original pixels, "scores": float32 [K], "labels": int64 [K] class index}, one per image, keyed by image id.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from deploy.runner.detection import box_iou

if TYPE_CHECKING:
    from compress.tasks.object_detection.detection_records import ImageRecord

# COCOeval's default area range "all" and detections per image: the numbers of the COCO leaderboard.
AREA_ALL = [0.0, 1e5 ** 2]
MAX_DETECTIONS = 100


def quiet():
    """pycocotools prints progress on stdout ("creating index...", "DONE (t=0.01s)"): keep it off our output."""
    return contextlib.redirect_stdout(io.StringIO())


def coco_ground_truth(images: list[ImageRecord], class_names: list[str], category_ids: list[int]) -> COCO:
    """The images' boxes as an in-memory pycocotools COCO object: bbox xywh, area w*h, iscrowd 0.

    Annotation ids start at 1: COCOeval marks an unmatched detection with the id 0, so a ground-truth box
    with id 0 would count its match as a miss."""
    annotations = []
    for image in images:
        boxes = np.asarray(image.boxes, dtype=np.float64).reshape(-1, 4)
        for box, label in zip(boxes, np.asarray(image.labels).reshape(-1)):
            width, height = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({"id": len(annotations) + 1, "image_id": int(image.image_id),
                                "category_id": int(category_ids[int(label)]),
                                "bbox": [float(box[0]), float(box[1]), width, height],
                                "area": width * height, "iscrowd": 0})
    dataset = {
        "images": [{"id": int(image.image_id), "width": int(image.width), "height": int(image.height),
                    "file_name": str(image.path)} for image in images],
        "annotations": annotations,
        "categories": [{"id": int(cid), "name": str(name)} for cid, name in zip(category_ids, class_names)],
    }
    return _coco(dataset)


def coco_detections(detections: dict[int, dict], category_ids: list[int]) -> list[dict]:
    """Detections by image id in COCO's result format: {"image_id", "category_id", "bbox" xywh, "score"}."""
    results = []
    for image_id, found in detections.items():
        boxes = np.asarray(found["boxes"], dtype=np.float64).reshape(-1, 4)
        for box, score, label in zip(boxes, np.asarray(found["scores"]).reshape(-1),
                                     np.asarray(found["labels"]).reshape(-1)):
            results.append({"image_id": int(image_id), "category_id": int(category_ids[int(label)]),
                            "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                            "score": float(score)})
    return results


def evaluate_map(ground_truth, detections: dict[int, dict], class_names: list[str], category_ids: list[int],
                 image_ids=None) -> dict:
    """COCO bbox mAP of `detections` on `ground_truth` (a COCO object from coco_ground_truth, or the list of
    ImageRecords to build it from), over `image_ids` (default: every ground-truth image).

    {"map": AP@[.5:.95], "map50", "map75", "per_class": {name: AP@[.5:.95], None for a class without ground
    truth}, "images": n}. With no detections at all the mAP is 0.0; with no ground-truth box at all it is
    undefined, and None."""
    ground_truth = _as_coco(ground_truth, class_names, category_ids)
    image_ids = sorted(ground_truth.getImgIds() if image_ids is None else {int(i) for i in image_ids})
    wanted = set(image_ids)
    evaluation = COCOeval(ground_truth, _result_coco(ground_truth, detections, category_ids, wanted), "bbox")
    evaluation.params.imgIds = image_ids
    with quiet():
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # precision: [iou thresholds, recall points, classes (sorted category ids), areas ("all" first), max dets]
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    sorted_ids = list(evaluation.params.catIds)
    per_class = {name: _mean_precision(precision[:, :, sorted_ids.index(int(cid))])
                 for name, cid in zip(class_names, category_ids)}
    stats = [None if value < 0 else float(value) for value in evaluation.stats[:3]]
    return {"map": stats[0], "map50": stats[1], "map75": stats[2], "per_class": per_class,
            "images": len(image_ids)}


def paired_bootstrap_map(ground_truth_images: list[ImageRecord], class_names: list[str], category_ids: list[int],
                         detections_a: dict[int, dict], detections_b: dict[int, dict], rounds: int = 200,
                         seed: int = 0) -> dict:
    """How sure the mAP difference of two models on the same images is: {"difference": mAP(a) - mAP(b) on all
    images, "low", "high": its 2.5 and 97.5 percentiles over `rounds` resamples of the images with replacement,
    "rounds": the resamples that counted (one without any ground-truth box has no mAP), "a", "b": the mAPs}.

    Paired: a round draws one resample and scores both models on it, so the difference of the models is
    measured rather than the difficulty of the images drawn. A resample is the dataset of the drawn images
    under fresh ids (an image drawn twice counts twice). pycocotools matches each image's detections to its
    boxes on its own (COCOeval.evaluateImg), so that dataset's per-image results are the full set's, repeated
    as drawn: each model is evaluated once, and a round hands pycocotools' accumulate the per-image results of
    its draw under fresh image ids -- the mAP COCOeval gives on the resampled dataset, without matching every
    image again (tests/test_coco_metrics.py checks that they agree)."""
    if not ground_truth_images:
        raise ValueError("a bootstrap over images needs images")
    ground_truth = coco_ground_truth(ground_truth_images, class_names, category_ids)
    evaluated = [_per_image_evaluation(ground_truth, found, category_ids) for found in (detections_a, detections_b)]
    count = len(evaluated[0].params.imgIds)
    everything = np.arange(count)
    map_a, map_b = (_resampled_map(evaluation, everything) for evaluation in evaluated)
    generator = np.random.default_rng(seed)
    differences = []
    for _ in range(rounds):
        picks = generator.integers(0, count, count)
        difference = _resampled_map(evaluated[0], picks) - _resampled_map(evaluated[1], picks)
        if not np.isnan(difference):
            differences.append(difference)
    low, high = (None, None) if not differences else (float(v) for v in np.percentile(differences, [2.5, 97.5]))
    return {"difference": _none_if_nan(map_a - map_b), "low": low, "high": high, "rounds": len(differences),
            "a": _none_if_nan(map_a), "b": _none_if_nan(map_b)}


def bootstrap_map(ground_truth_images: list[ImageRecord], class_names: list[str], category_ids: list[int],
                  detections: dict[int, dict], rounds: int = 200, seed: int = 0) -> dict:
    """One model's mAP and its 95% interval over `rounds` resamples of the images with replacement (the same
    resampling as paired_bootstrap_map): {"map", "low", "high", "rounds"}."""
    if not ground_truth_images:
        raise ValueError("a bootstrap over images needs images")
    evaluation = _per_image_evaluation(coco_ground_truth(ground_truth_images, class_names, category_ids), detections,
                                       category_ids)
    count = len(evaluation.params.imgIds)
    generator = np.random.default_rng(seed)
    found = [_resampled_map(evaluation, generator.integers(0, count, count)) for _ in range(rounds)]
    found = [value for value in found if not np.isnan(value)]
    low, high = (None, None) if not found else (float(v) for v in np.percentile(found, [2.5, 97.5]))
    return {"map": _none_if_nan(_resampled_map(evaluation, np.arange(count))), "low": low, "high": high,
            "rounds": len(found)}


def match_boxes(reference, candidate, iou: float = 0.9) -> dict:
    """Box parity of two engines: each reference box, in order (by score), takes the unmatched candidate box of
    its label that overlaps it most, if by IoU >= `iou`. Takes one image's Detections, or lists (or dicts by
    image id) of them, summed over the images.

    {"reference_boxes", "candidate_boxes", "matched", "agreement": matched / max(reference, candidate), 1.0 when
    both found nothing, "score_abs_diff_max", "score_abs_diff_mean": over the matched pairs, 0.0 without any}."""
    pairs = _image_pairs(reference, candidate)
    reference_boxes = candidate_boxes = 0
    differences = []
    for ref, cand in pairs:
        ref_count, cand_count, diffs = _match_image(ref, cand, iou)
        reference_boxes += ref_count
        candidate_boxes += cand_count
        differences.extend(diffs)
    most = max(reference_boxes, candidate_boxes)
    return {"reference_boxes": reference_boxes, "candidate_boxes": candidate_boxes, "matched": len(differences),
            "agreement": len(differences) / most if most else 1.0,
            "score_abs_diff_max": float(max(differences)) if differences else 0.0,
            "score_abs_diff_mean": float(np.mean(differences)) if differences else 0.0}


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with quiet():
        coco.createIndex()
    return coco


def _as_coco(ground_truth, class_names, category_ids) -> COCO:
    return ground_truth if isinstance(ground_truth, COCO) else coco_ground_truth(list(ground_truth), class_names,
                                                                                  category_ids)


def _result_coco(ground_truth: COCO, detections: dict[int, dict], category_ids, image_ids=None) -> COCO:
    """The detections as COCO.loadRes makes them for boxes (ids from 1, area w*h, iscrowd 0), built directly:
    loadRes cannot take an empty list, and a model that finds nothing must score 0, not crash."""
    unknown = sorted(set(int(i) for i in detections) - set(ground_truth.getImgIds()))
    if unknown:
        raise ValueError(f"detections for image ids the ground truth does not have: {unknown[:10]}")
    if image_ids is not None:
        detections = {i: found for i, found in detections.items() if int(i) in image_ids}
    annotations = coco_detections(detections, category_ids)
    for number, annotation in enumerate(annotations, start=1):
        annotation.update(id=number, area=annotation["bbox"][2] * annotation["bbox"][3], iscrowd=0)
    return _coco({"images": ground_truth.dataset["images"], "categories": ground_truth.dataset["categories"],
                  "annotations": annotations})


def _per_image_evaluation(ground_truth: COCO, detections: dict[int, dict], category_ids) -> COCOeval:
    """COCOeval after evaluate(), for area "all" and 100 detections only (the numbers reported; the other
    areas would only cost time): evalImgs then holds one entry per (class, image), class-major."""
    evaluation = COCOeval(ground_truth, _result_coco(ground_truth, detections, category_ids), "bbox")
    evaluation.params.areaRng = [AREA_ALL]
    evaluation.params.areaRngLbl = ["all"]
    evaluation.params.maxDets = [MAX_DETECTIONS]
    with quiet():
        evaluation.evaluate()
    return evaluation


def _resampled_map(evaluation: COCOeval, picks) -> float:
    """mAP@[.5:.95] by COCOeval.accumulate of the images `picks` (indices into the sorted image ids, repeats
    allowed) under fresh ids 0..n-1: the per-image results evaluate() gave, repeated as drawn. NaN without any
    ground-truth box among them."""
    count = len(evaluation.params.imgIds)
    blocks = len(evaluation.evalImgs) // count
    resampled = copy.copy(evaluation)
    resampled.params = copy.copy(evaluation.params)
    resampled.params.imgIds = list(range(len(picks)))
    resampled._paramsEval = copy.copy(resampled.params)
    resampled.evalImgs = [evaluation.evalImgs[block * count + int(i)] for block in range(blocks) for i in picks]
    with quiet():
        resampled.accumulate()
    value = _mean_precision(resampled.eval["precision"][:, :, :, 0, -1])
    return np.nan if value is None else value


def _mean_precision(precision: np.ndarray):
    """COCOeval.summarize's average: the mean of the precisions that exist (-1 marks a class without ground
    truth), None when none does."""
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else None


def _none_if_nan(value: float):
    return None if np.isnan(value) else float(value)


def _is_detections(value) -> bool:
    return isinstance(value, Mapping) and "boxes" in value


def _image_pairs(reference, candidate) -> list[tuple[dict, dict]]:
    """(reference, candidate) per image from one Detections each, equal-length lists, or dicts by image id (an
    image one side lacks counts as no detections there)."""
    if _is_detections(reference) and _is_detections(candidate):
        return [(reference, candidate)]
    if isinstance(reference, Mapping) and isinstance(candidate, Mapping):
        keys = sorted(set(reference) | set(candidate))
        return [(reference.get(key, _EMPTY), candidate.get(key, _EMPTY)) for key in keys]
    reference, candidate = list(reference), list(candidate)
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} images of reference detections but {len(candidate)} of candidate ones")
    return list(zip(reference, candidate))


_EMPTY = {"boxes": np.zeros((0, 4), dtype=np.float32), "scores": np.zeros((0,), dtype=np.float32),
          "labels": np.zeros((0,), dtype=np.int64)}


def _match_image(reference: dict, candidate: dict, iou: float) -> tuple[int, int, list[float]]:
    ref_boxes = np.asarray(reference["boxes"], dtype=np.float64).reshape(-1, 4)
    cand_boxes = np.asarray(candidate["boxes"], dtype=np.float64).reshape(-1, 4)
    ref_scores = np.asarray(reference["scores"], dtype=np.float64).reshape(-1)
    cand_scores = np.asarray(candidate["scores"], dtype=np.float64).reshape(-1)
    ref_labels = np.asarray(reference["labels"]).reshape(-1)
    cand_labels = np.asarray(candidate["labels"]).reshape(-1)
    overlaps = box_iou(ref_boxes, cand_boxes)
    overlaps[ref_labels[:, None] != cand_labels[None, :]] = -1.0
    taken = np.zeros(len(cand_boxes), dtype=bool)
    differences = []
    for row, overlap in enumerate(overlaps):
        if not len(overlap):
            break
        overlap = np.where(taken, -1.0, overlap)
        best = int(np.argmax(overlap))
        if overlap[best] >= iou:
            taken[best] = True
            differences.append(abs(ref_scores[row] - cand_scores[best]))
    return len(ref_boxes), len(cand_boxes), differences
