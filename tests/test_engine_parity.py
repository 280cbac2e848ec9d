"""Every engine the build makes is checked against the model it came from: fp32 engines (and int8 ones the
engine quantizes itself) against the torch student, int8 engines built from the Q/DQ ONNX against the
fake-quantized torch model; engine.json, the results rows, the report and a gate carry the verdict."""

from __future__ import annotations

import json

import pytest

from compress.cli import main
from compress.config import GatesConfig
from compress.reporting.verdict import evaluate_gates


def test_engines_are_checked_against_their_own_reference_model(tiny_config, write_pipeline, tmp_path):
    tiny_config["stages"]["quantize"] = {"mode": "ptq"}
    tiny_config["stages"]["build"] = {"targets": ["onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32"]}
    tiny_config["gates"] = {"min_engine_agreement": {"int8": 0.95}}
    run_dir = tmp_path / "run"
    assert main(["run", str(write_pipeline(tiny_config)), "--run-dir", str(run_dir)]) in (0, 3)
    build = run_dir / "stages" / "build"
    checked = {name: json.loads((build / f"student.{name}" / "engine.json").read_text())["parity"]
               for name in ("onnxruntime.fp32", "onnxruntime.int8", "openvino.fp32")}
    assert checked["onnxruntime.fp32"]["reference"] == "stages/distill/student.pt"
    assert checked["openvino.fp32"]["reference"] == "stages/distill/student.pt"
    assert checked["onnxruntime.int8"]["reference"] == "stages/quantize/student.int8.pt"  # built from the Q/DQ ONNX
    assert checked["onnxruntime.fp32"]["min_agreement"] == 0.999 and checked["onnxruntime.int8"]["min_agreement"] == 0.95
    for report in checked.values():
        assert report["samples"] >= 300 and report["passed"] and report["top1_agreement"] >= report["min_agreement"]
    assert checked["onnxruntime.fp32"]["max_abs_error"] < 1e-4  # fp32 ONNX Runtime computes what torch computes

    rows = json.loads((run_dir / "stages" / "benchmark" / "results.json").read_text())["rows"]
    assert all("engine_parity" in r for r in rows if r["backend"] != "torch")
    text = (run_dir / "report.md").read_text()
    assert "## Engine parity" in text and "`stages/quantize/student.int8.pt`" in text
    assert "min_engine_agreement" in text and 'id="engine-parity"' in (run_dir / "report.html").read_text()


def row(backend: str, precision: str, agreement: float | None) -> dict:
    parity = {"top1_agreement": agreement, "reference": "stages/distill/student.pt", "samples": 100,
              "max_abs_error": 0.01} if agreement is not None else None
    return {"model": "student", "backend": backend, "precision": precision, "batch_size": 1,
            "latency_ms": {"p50": 1.0}, "accuracy": {"top1": 0.9}, "size_mb": 1.0,
            **({"engine_parity": parity} if parity else {})}


@pytest.mark.parametrize("choice,passed,words", [
    (row("onnxruntime", "int8", 0.995), True, "top-1 agreement with stages/distill/student.pt on 100 val inputs"),
    (row("onnxruntime", "int8", 0.95), False, "top-1 agreement"),
    (row("openvino", "fp32", 0.998), False, "max |diff| 1.00e-02"),  # fp32 needs 0.999 by default
    (row("torch", "fp32", None), True, "the torch model itself"),
    (row("onnxruntime", "fp32", None), False, "rerun with --force build"),
])
def test_the_engine_agreement_gate_judges_the_recommended_engine(choice, passed, words):
    gates = GatesConfig(min_engine_agreement={"int8": 0.99})
    (verdict,) = evaluate_gates([choice], gates, choice)
    assert verdict["gate"] == "min_engine_agreement" and verdict["passed"] is passed and words in verdict["detail"]


@pytest.mark.parametrize("gate,words", [(1.5, "not a fraction"), ({"int4": 0.9}, "unknown precision 'int4'"),
                                        (0, "not a fraction")])
def test_bad_engine_agreement_gates_are_one_line(tiny_config, write_pipeline, capsys, gate, words):
    tiny_config["gates"] = {"min_engine_agreement": gate}
    assert main(["validate", str(write_pipeline(tiny_config))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gates.min_engine_agreement" in err[0] and words in err[0], err
