"""The quantized pipeline end to end on digits: QAT+KD, Q/DQ export, int8 engines, and its bad inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compress.cli import main
from compress.runner import parse_pipeline
from compress.core.errors import ConfigError
from compress.core.fileio import read_json

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits" / "quantized.yaml"


def example_config() -> dict:
    """examples/digits/quantized.yaml with shorter training, so the suite stays quick."""
    config = yaml.safe_load(EXAMPLE.read_text())
    config["teacher"]["train"]["epochs"] = 4
    config["stages"]["distill"]["epochs"] = 8
    config["stages"]["quantize"]["epochs"] = 2
    config["stages"]["benchmark"] = {"batch_sizes": [1], "warmup": 1, "runs": 3, "min_seconds": 0.0}
    return config


def run(config: dict, path: Path, run_dir: Path) -> int:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return main(["--quiet", "run", str(path), "--run-dir", str(run_dir)])


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("quantized")
    config = example_config()
    assert run(config, work / "pipeline.yaml", work / "run") == 0
    return config, work


def statuses(run_dir: Path) -> dict[str, str]:
    return {name: entry["status"] for name, entry in read_json(run_dir / "run.json")["stages"].items()}


def test_qat_int8_students_stay_within_one_point_of_fp32(qat_run):
    _, work = qat_run
    run_dir = work / "run"
    rows = {(r["backend"], r["precision"]): r for r in read_json(run_dir / "stages/benchmark/results.json")["rows"]
            if r["model"] == "student"}
    assert set(rows) == {("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"),
                         ("openvino", "fp16"), ("openvino", "int8")}
    fp32 = rows["onnxruntime", "fp32"]["accuracy"]["top1"]
    for backend in ("onnxruntime", "openvino"):
        assert abs(rows[backend, "int8"]["accuracy"]["top1"] - fp32) <= 0.01, (backend, rows[backend, "int8"])

    quantize = read_json(run_dir / "run.json")["stages"]["quantize"]["outputs"]
    assert quantize["mode"] == "qat" and quantize["quantizers"] > 0
    assert len((run_dir / quantize["metrics"]).read_text().splitlines()) == 2  # one line per QAT epoch
    export = read_json(run_dir / "run.json")["stages"]["export"]["outputs"]
    assert export["onnx_qdq"] == "stages/export/student.qdq.onnx" and export["onnx"] == "stages/export/student.onnx"
    parity = read_json(run_dir / "stages/export/parity.json")
    assert parity["qdq"]["passed"] and parity["qdq"]["top1_agreement"] >= 0.99
    for backend in ("onnxruntime", "openvino"):
        sidecar = read_json(run_dir / f"stages/build/student.{backend}.int8/engine.json")
        assert sidecar["source_onnx"].endswith("student.qdq.onnx")
    assert read_json(run_dir / "stages/build/student.openvino.fp32/engine.json")["source_onnx"].endswith("student.onnx")


def test_an_interrupted_qat_resumes_from_its_last_epoch(qat_run, capsys):
    """As if the run died after the last QAT epoch: the rerun resumes from last.pt instead of retraining."""
    from compress.core.fileio import write_json

    config, work = qat_run
    record = read_json(work / "run/run.json")
    record["stages"]["quantize"]["status"] = "running"
    write_json(work / "run/run.json", record)
    (work / "run/stages/quantize/student.int8.pt").unlink()
    path = work / "pipeline.yaml"
    assert main(["run", str(path), "--run-dir", str(work / "run")]) == 0
    out = capsys.readouterr().out
    assert "[distill] cached" in out and "[quantize] resuming from epoch 2/2" in out
    assert "[quantize] epoch" not in out
    assert (work / "run/stages/quantize/student.int8.pt").is_file()


def test_ptq_for_tensorrt_exports_signed_int8_and_reuses_the_student(qat_run, capsys):
    config, work = qat_run
    config["stages"]["quantize"] = {"mode": "ptq", "target": "tensorrt", "calibration_size": 200}
    config["stages"]["build"] = {"targets": ["onnxruntime:int8"]}
    before = read_json(work / "run/run.json")["stages"]
    assert run(config, work / "ptq.yaml", work / "run") == 0
    assert capsys.readouterr().out == ""  # --quiet, NNCF's progress bars included
    after = read_json(work / "run/run.json")["stages"]
    assert after["distill"]["started"] == before["distill"]["started"]  # cached, not retrained
    assert after["quantize"]["key"] != before["quantize"]["key"] and after["quantize"]["outputs"]["mode"] == "ptq"
    form = read_json(work / "run/stages/export/parity.json")["qdq"]["form"]
    assert form["signed_int8_zero_point_0"] and form["quantize_nodes"] > 0


def test_a_bad_ignored_scope_name_is_one_line_exit_2_and_keeps_earlier_stages(qat_run, capsys):
    config, work = qat_run
    teacher_pt = work / "run/stages/teacher/teacher.pt"
    before = teacher_pt.stat().st_mtime_ns
    config["stages"]["quantize"] = {"mode": "ptq", "ignored_scope": ["fc", "layers.99"]}
    path = work / "bad-scope.yaml"
    assert run(config, path, work / "run") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: stages.quantize.ignored_scope[1]: no module 'layers.99'")
    assert "its modules: " in err[0] and "fc" in err[0]
    assert main(["validate", str(path)]) == 2  # refused at load, before any stage runs
    state = statuses(work / "run")
    assert state["teacher"] == state["distill"] == state["quantize"] == "done"
    assert teacher_pt.stat().st_mtime_ns == before


def test_a_student_nncf_cannot_quantize_is_one_line_exit_2(tiny_config, write_pipeline, tmp_path, capsys):
    tiny_config["student"] = {"model": "tests.quant_models:ScaledPixels"}
    tiny_config["stages"]["distill"]["epochs"] = 1
    tiny_config["stages"]["quantize"] = {"mode": "ptq"}
    path = write_pipeline(tiny_config)
    assert main(["--quiet", "run", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: student.model: 'tests.quant_models:ScaledPixels'")
    assert "no operation with weights" in err[0]
    assert (tmp_path / "run/stages/distill/student.pt").is_file()


@pytest.mark.parametrize("section, path, words", [
    ({"mode": "ptq", "epochs": 3}, "stages.quantize.epochs", "QAT option"),
    ({"mode": "int4"}, "stages.quantize.mode", "'ptq' or 'qat'"),
    ({"target": "tensorrt", "preset": "mixed"}, "stages.quantize.preset", "symmetric"),
    ({"target": "gpu"}, "stages.quantize.target", "'cpu' or 'tensorrt'"),
    ({"calibration_size": 0}, "stages.quantize.calibration_size", "greater than or equal to 1"),
    ({"ignored_scope": ["fc", "fc"]}, "stages.quantize.ignored_scope", "listed twice"),
    ({"ignored_scope": ["fc", "head"]}, "stages.quantize.ignored_scope[1]",
     "no module 'head' in student 'mlp'; its modules: features, features.0, features.1, features.2, fc"),
])
def test_bad_quantize_options_name_the_field(tiny_config, section, path, words):
    tiny_config["stages"]["quantize"] = section
    with pytest.raises(ConfigError) as error:
        parse_pipeline(tiny_config, "p.yaml")
    assert error.value.path == path and words in error.value.message


def test_the_example_is_valid():
    assert main(["--quiet", "validate", str(EXAMPLE)]) == 0
