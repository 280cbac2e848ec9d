"""The detector, its FCOS targets and loss, the ONNX forms, and the training loop (KD, resume, best epoch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compress.tasks.object_detection.fcos_loss import assign, fcos_loss
from compress.tasks.object_detection.detectors import build_detector, check_detector_name, locations


def test_locations_are_level_major_and_row_major():
    points, strides = locations([(2, 3), (1, 2)], (8, 16), "cpu")
    assert points.tolist()[:4] == [[4, 4], [12, 4], [20, 4], [4, 12]]
    assert points.tolist()[6:] == [[8, 8], [24, 8]]
    assert strides.tolist() == [8] * 6 + [16] * 2


def test_a_box_is_assigned_to_the_locations_near_its_centre_on_its_level():
    """A 24x24 box centred at (36, 36): stride-8 locations within 1.5 strides (12 px) of the centre, largest side
    distance <= 64, so level 0 only; centerness of the centre location is 1."""
    points, strides = locations([(8, 8), (4, 4), (2, 2)], (8, 16, 32), "cpu")
    target = {"boxes": torch.tensor([[24.0, 24.0, 48.0, 48.0]]), "labels": torch.tensor([3])}
    assigned = assign(points, strides, [target])
    positive = (assigned.labels[0] >= 0).nonzero().flatten().tolist()
    chosen = points[positive].tolist()
    # centre region (24, 48) exclusive on both axes: x, y in {28, 36, 44}
    assert sorted(chosen) == sorted([[x, y] for x in (28, 36, 44) for y in (28, 36, 44)])
    assert (assigned.labels[0][positive] == 3).all()
    centre = positive[chosen.index([36.0, 36.0])]
    assert assigned.centerness[0, centre].item() == pytest.approx(1.0)
    corner = positive[chosen.index([28.0, 28.0])]  # l=t=4, r=b=20: sqrt(4/20 * 4/20)
    assert assigned.centerness[0, corner].item() == pytest.approx(math.sqrt(0.2 * 0.2))


def test_a_large_box_goes_to_a_coarse_level_and_overlaps_take_the_smallest_box():
    points, strides = locations([(16, 16), (8, 8), (4, 4)], (8, 16, 32), "cpu")
    big = [0.0, 0.0, 128.0, 128.0]   # largest side distance 64 at the centre: beyond level 0's range
    small = [56.0, 56.0, 72.0, 72.0]
    assigned = assign(points, strides, [{"boxes": torch.tensor([big, small]), "labels": torch.tensor([0, 1])}])
    labels, level = assigned.labels[0], strides
    assert set(level[labels == 0].tolist()) <= {16.0, 32.0} and (labels == 0).any()
    assert set(level[labels == 1].tolist()) == {8.0}


def test_an_image_without_boxes_has_no_positives_and_a_finite_loss():
    model = build_detector("fcos:mobilenetv3_small_050", 4, {"fpn_channels": 16, "head_convs": 1})
    out = model.dense(torch.rand(2, 3, 64, 64))
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    losses = fcos_loss(out, [empty, empty], 4)
    assert torch.isfinite(losses["total"]) and losses["box"].item() == 0.0
    losses["total"].backward()


def test_the_export_form_is_boxes_then_scores_in_zero_one():
    model = build_detector("fcos:mobilenetv3_small_050", 5, {"fpn_channels": 16, "head_convs": 1}).eval()
    predictions = model(torch.rand(1, 3, 64, 64))
    assert predictions.shape == (1, 64 // 8 * 64 // 8 + 16 + 4, 4 + 5)
    scores = predictions[..., 4:]
    assert ((scores > 0) & (scores < 1)).all()
    boxes = predictions[0, :, :4]
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


@pytest.mark.parametrize("name, problem", [("fcos:resnet18", None), ("resnet18", "fcos:BACKBONE"),
                                           ("fcos:", "fcos:BACKBONE"), ("fcos:not_a_net", "not a timm model")])
def test_detector_names(name, problem):
    found = check_detector_name(name)
    assert (found is None) if problem is None else problem in found


def records_of(tmp_path, count=8):
    from compress.tasks.object_detection.detection_records import read_coco
    from compress.tasks.object_detection.synthetic import write_digits_coco

    paths = write_digits_coco(tmp_path, {"train": count, "val": 4}, canvas=96, seed=0)
    return read_coco(paths["train"], None, "p.yaml"), read_coco(paths["val"], None, "p.yaml")


def test_training_resumes_after_the_last_finished_epoch_and_keeps_the_best(tmp_path):
    from compress.tasks.object_detection.det_fit import FitOptions, train_detector

    train, val = records_of(tmp_path)
    scores = iter([0.2, 0.1, 0.05])
    logs = []

    def evaluate(model):
        return next(scores)

    model = build_detector("fcos:mobilenetv3_small_050", 10, {"fpn_channels": 16, "head_convs": 1})
    options = FitOptions(epochs=1, batch_size=4, image_size=64)
    first = train_detector(model, train.images, val.images, options, tmp_path / "work", evaluate, logs.append)
    assert first["best_epoch"] == 1
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    options.epochs = 3  # a longer run over the same folder: epochs 2 and 3 only
    again = build_detector("fcos:mobilenetv3_small_050", 10, {"fpn_channels": 16, "head_convs": 1})
    second = train_detector(again, train.images, val.images, options, tmp_path / "work", evaluate, logs.append)
    assert any("resuming after epoch 1 of 3" in line for line in logs)
    assert [e["epoch"] for e in second["epochs"]] == [1, 2, 3] and second["best_epoch"] == 1
    for key, value in again.state_dict().items():  # the best epoch's weights are the ones kept
        assert torch.equal(value, best_state[key]), key


def test_distillation_trains_the_adapters_and_reports_each_kd_term(tmp_path):
    from compress.tasks.object_detection.det_fit import DetectionKD, FitOptions, train_detector

    train, val = records_of(tmp_path)
    teacher = build_detector("fcos:resnet10t", 10, {"fpn_channels": 32, "head_convs": 1}).eval()
    with torch.no_grad():  # a teacher that finds objects everywhere, so the dense and box terms are active
        teacher.head.cls.bias.fill_(2.0)
    student = build_detector("fcos:mobilenetv3_small_050", 10, {"fpn_channels": 16, "head_convs": 1})
    history = train_detector(student, train.images, val.images, FitOptions(epochs=1, batch_size=4, image_size=64),
                             tmp_path / "kd", lambda m: 0.0, lambda line: None, teacher=teacher,
                             kd=DetectionKD(feature="cwd", feature_params={"tau": 2.0}, score_threshold=0.3))
    epoch = history["epochs"][0]
    assert epoch["kd_feature"] > 0 and epoch["kd_class"] > 0 and epoch["kd_box"] > 0
    saved = torch.load(tmp_path / "kd" / "checkpoint.pt", weights_only=True)
    assert any(key.startswith("adapters.") for key in saved["terms"])  # 16 -> 32 channels
    assert all(not p.requires_grad for p in teacher.parameters())


def test_the_tensorrt_form_ends_in_efficient_nms(tmp_path):
    import onnx

    from compress.tasks.object_detection.evaluation import PostSettings
    from compress.tasks.object_detection.onnx_forms import export_raw, lint_tensorrt_form, tensorrt_form

    model = build_detector("fcos:mobilenetv3_small_050", 3, {"fpn_channels": 16, "head_convs": 1})
    export_raw(model, tmp_path / "raw.onnx", 64)
    tensorrt_form(tmp_path / "raw.onnx", tmp_path / "trt.onnx", 3, PostSettings(max_detections=50))
    graph = onnx.load(str(tmp_path / "trt.onnx")).graph
    nms = next(n for n in graph.node if n.op_type == "EfficientNMS_TRT")
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in nms.attribute}
    assert attributes["max_output_boxes"] == 50 and attributes["box_coding"] == 0
    assert attributes["score_activation"] == 0 and attributes["background_class"] == -1
    assert [o.name for o in graph.output] == ["num_detections", "detection_boxes", "detection_scores",
                                              "detection_classes"]
    report = lint_tensorrt_form(tmp_path / "trt.onnx")
    assert report["clean"] and "If" not in report["ops"], report
    assert np.array(report["plugins"]).tolist() == ["EfficientNMS_TRT"]
