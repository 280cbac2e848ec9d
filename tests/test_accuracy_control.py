"""Accuracy-controlled PTQ: the search itself, a student whose plain PTQ collapses, and its bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from compress.cli import main
from compress.core.fileio import read_json
from compress.quantize.accuracy_control import Scorers, control_accuracy, default_float_limit, normalized_mse

LAYERS = [("a", "Conv2d"), ("b", "Conv2d"), ("c", "Conv2d"), ("d", "Conv2d"), ("e", "Linear")]


def toy_search(harm: dict[str, float], float_top1: float = 0.9):
    """A model is the set of its float layers; each int8 layer costs its `harm` in top-1 and output error."""
    quantized_calls = []

    def quantize(float_layers):
        quantized_calls.append(list(float_layers))
        return frozenset(float_layers)

    def top1(model):
        return float_top1 - sum(h for name, h in harm.items() if model is not None and name not in model)

    def ranking(model):
        error = sum(h for name, h in harm.items() if model is not None and name not in model)
        logits = np.array([[1.0, 0.0], [0.0, 1.0]]) + error
        return logits, np.array([0, 1])

    return quantize, Scorers(top1=top1, ranking=ranking), quantized_calls


def test_the_most_sensitive_layers_return_to_float_until_the_budget_holds():
    harm = {"a": 0.001, "b": 0.03, "c": 0.0, "d": 0.02, "e": 0.002}
    quantize, scorers, calls = toy_search(harm)
    result = control_accuracy(LAYERS, quantize, scorers, None, budget=0.005, max_float_layers=3, log=lambda _: None)
    assert [s.layer for s in result.sensitivity][:2] == ["b", "d"]  # ranked by the error each removes
    assert result.float_layers == ["b", "d"] and result.met
    assert result.top1 == pytest.approx(0.9 - 0.003)
    assert [step["float_layers"] for step in result.steps] == [[], ["b"], ["b", "d"]]
    assert calls[-1] == ["b", "d"]  # the returned model is quantized with exactly those layers in float


def test_a_budget_out_of_reach_stops_at_the_float_layer_limit_and_says_so():
    quantize, scorers, _ = toy_search({"a": 0.05, "b": 0.05, "c": 0.05, "d": 0.05, "e": 0.05})
    result = control_accuracy(LAYERS, quantize, scorers, None, budget=0.01, max_float_layers=2, log=lambda _: None)
    assert not result.met and len(result.float_layers) == 2 and result.drop == pytest.approx(0.15)
    assert result.summary()["int8_layers"] == 3
    # Every layer may not go back to float: at least one stays int8.
    everything = control_accuracy(LAYERS, quantize, scorers, None, budget=0.01, max_float_layers=99,
                                  log=lambda _: None)
    assert len(everything.float_layers) == 4


def test_no_search_when_every_layer_int8_is_within_budget():
    quantize, scorers, calls = toy_search({"a": 0.001})
    result = control_accuracy(LAYERS, quantize, scorers, None, budget=0.005, log=lambda _: None)
    assert result.met and result.float_layers == [] and result.sensitivity == [] and calls == [[]]


def test_default_float_limit_keeps_four_fifths_int8():
    assert [default_float_limit(n) for n in (1, 4, 5, 10, 11)] == [0, 1, 1, 2, 2]
    assert normalized_mse(np.ones((2, 2)), np.ones((2, 2)) * 1.5) == pytest.approx(0.25)


def outlier_config(**quantize) -> dict:
    return {
        "name": "outlier", "seed": 0,
        "data": {"source": "digits", "val_fraction": 0.25},
        "teacher": {"model": "cnn", "kwargs": {"channels": [16, 32]},
                    "train": {"epochs": 3, "batch_size": 64, "lr": 0.005}},
        "student": {"model": "tests.quant_models:OutlierCNN", "kwargs": {"extra_convs": 1}},
        "stages": {
            "distill": {"epochs": 8, "batch_size": 64, "lr": 0.01, "temperature": 4.0, "alpha": 0.7},
            "quantize": {"mode": "ptq", **quantize},
            "export": {},
            "build": {"targets": ["onnxruntime:int8", "openvino:int8"]},
            "benchmark": {"batch_sizes": [1], "warmup": 1, "runs": 3, "min_seconds": 0.0, "memory": False},
            "report": {},
        },
    }


def run(config: dict, work: Path) -> int:
    path = work / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return main(["--quiet", "run", str(path), "--run-dir", str(work / "run")])


@pytest.fixture(scope="module")
def controlled_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("accuracy_control")
    assert run(outlier_config(max_accuracy_drop=0.01), work) == 0
    return work / "run"


def test_an_outlier_layer_goes_back_to_float_and_the_budget_holds(controlled_run):
    control = read_json(controlled_run / "run.json")["stages"]["quantize"]["outputs"]["accuracy_control"]
    assert control["float_top1"] - control["plain_ptq_top1"] > 0.01  # plain PTQ loses more than a point
    assert control["met"] and control["drop"] <= 0.01
    assert control["float_layers"] == ["conv2"]  # the conv that reads the outlier channel
    assert control["sensitivity"][0]["layer"] == "conv2" and control["sensitivity"][0]["error_removed"] > 0.5
    assert control["int8_layers"] / control["layers"] >= 0.8


def test_the_exported_qdq_onnx_leaves_the_float_layer_unquantized(controlled_run):
    graph = onnx.load(controlled_run / "stages/export/student.qdq.onnx").graph
    producers = {out: node for node in graph.node for out in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    fed_by_dq = [all(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                     for i in node.input[:2]) for node in convs]
    assert fed_by_dq.count(False) == 1 and len(convs) == 4  # conv2 alone takes float input and weight


def test_int8_engines_agree_with_the_controlled_model_and_the_report_shows_the_search(controlled_run):
    engines = read_json(controlled_run / "run.json")["stages"]["build"]["outputs"]["engines"]
    assert {e["backend"] for e in engines} == {"onnxruntime", "openvino"}
    assert all(e["parity"]["passed"] for e in engines), [e["parity"] for e in engines]
    report = (controlled_run / "report.md").read_text()
    assert "## Accuracy-controlled quantization" in report and "Layers kept in float: `conv2`" in report
    assert 'alt="per-layer sensitivity"' in (controlled_run / "report.html").read_text()


@pytest.mark.parametrize("options, field", [
    ({"max_accuracy_drop": 0}, "stages.quantize.max_accuracy_drop"),
    ({"max_accuracy_drop": -0.01}, "stages.quantize.max_accuracy_drop"),
    ({"max_accuracy_drop": 0.01, "max_float_layers": -1}, "stages.quantize.max_float_layers"),
    ({"max_float_layers": 2}, "stages.quantize.max_float_layers"),
    ({"ranking_size": 100}, "stages.quantize.ranking_size"),
])
def test_bad_accuracy_control_options_are_one_line_and_exit_2(tmp_path, capsys, options, field):
    path = tmp_path / "pipeline.yaml"
    config = outlier_config(**options)
    config["student"] = {"model": "cnn", "kwargs": {"channels": [8, 16]}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}: {field}:" in err, err


def openvino_config(**build) -> dict:
    config = outlier_config()
    del config["stages"]["quantize"]
    config["stages"]["build"] = {"targets": ["openvino:fp32", "openvino:int8"], **build}
    return config


def test_openvino_int8_calibrated_here_uses_nncf_accuracy_control(tmp_path):
    assert run(openvino_config(accuracy_control={"max_accuracy_drop": 0.01}), tmp_path) == 0
    sidecar = read_json(tmp_path / "run/stages/build/student.openvino.int8/engine.json")
    control = sidecar["quantization"]["accuracy_control"]
    assert sidecar["quantization"]["method"] == "NNCF PTQ with accuracy control of the OpenVINO model"
    assert control["met"] and control["float_top1"] - control["top1"] <= 0.01
    assert any(op.startswith("/conv2/") for op in control["reverted_ops"]), control
    rows = {r["precision"]: r for r in read_json(tmp_path / "run/stages/benchmark/results.json")["rows"]
            if r["model"] == "student" and r["backend"] == "openvino"}
    assert rows["fp32"]["accuracy"]["top1"] - rows["int8"]["accuracy"]["top1"] <= 0.01


@pytest.mark.parametrize("build, message", [
    ({"accuracy_control": {"max_accuracy_drop": 0}}, "stages.build.accuracy_control.max_accuracy_drop:"),
    ({"accuracy_control": {"max_accuracy_drop": 0.01, "max_float_layers": -2}},
     "stages.build.accuracy_control.max_float_layers:"),
    ({"targets": ["openvino:fp32"], "accuracy_control": {"max_accuracy_drop": 0.01}},
     "stages.build.accuracy_control: applies to the openvino:int8 target"),
])
def test_bad_build_accuracy_control_is_one_line_and_exit_2(tmp_path, capsys, build, message):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(openvino_config(**build), sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}: {message}" in err, err


def test_build_accuracy_control_beside_a_quantize_stage_points_to_the_quantize_budget(tmp_path, capsys):
    config = outlier_config()
    config["stages"]["build"]["accuracy_control"] = {"max_accuracy_drop": 0.01}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "stages.build.accuracy_control:" in err and "stages.quantize" in err, err


def test_qat_starts_from_the_accuracy_controlled_model(tmp_path):
    import torch

    config = outlier_config(max_accuracy_drop=0.01)
    config["stages"]["quantize"].update(mode="qat", epochs=1)
    config["stages"]["build"] = {"targets": ["onnxruntime:int8"]}
    assert run(config, tmp_path) == 0
    outputs = read_json(tmp_path / "run/run.json")["stages"]["quantize"]["outputs"]
    assert outputs["mode"] == "qat" and outputs["best_epoch"] == 1
    assert outputs["accuracy_control"]["float_layers"] == ["conv2"]
    saved = torch.load(tmp_path / "run/stages/quantize/student.int8.pt", weights_only=True)
    assert saved["ignored_scope"] == ["conv2"]  # fine-tuned with conv2 still in float
