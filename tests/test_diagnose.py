"""`compress diagnose RUN_DIR ARTIFACT`: where an engine's outputs start to differ from its model, tensor by tensor."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compress.cli import main


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    import copy

    import yaml

    from conftest import TINY

    config = copy.deepcopy(TINY)
    config["student"] = {"model": "cnn", "kwargs": {"channels": [8, 16]}}
    config["stages"]["build"] = {"targets": ["onnxruntime:int8", "openvino:fp32"]}
    folder = tmp_path_factory.mktemp("diagnose")
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(config))
    assert main(["--quiet", "run", str(folder / "pipeline.yaml"), "--run-dir", str(folder / "run")]) == 0
    return folder / "run"


def test_a_healthy_int8_engine_shows_small_errors_and_names_its_quantizers(int8_run, tmp_path, capsys):
    assert main(["diagnose", str(int8_run), "student.onnxruntime.int8", "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("student.onnxruntime.int8 against stages/export/student.onnx:")
    result = json.loads((tmp_path / "d.json").read_text())
    names = [t["tensor"] for t in result["tensors"]]
    assert names[-1] == "logits" and all(t["relative_error"] < 0.05 for t in result["tensors"])
    # a Conv whose Relu the quantizer dropped keeps the Relu's name: it is not compared as a Relu
    assert all(t["op"] != "Relu" or t["relative_error"] < 0.05 for t in result["tensors"])


def test_a_broken_quantizer_is_found_where_its_error_enters(int8_run, tmp_path, capsys):
    import shutil

    run = shutil.copytree(int8_run, tmp_path / "run")
    path = run / "stages" / "build" / "student.onnxruntime.int8" / "model.onnx"
    model = onnx.load(str(path))
    quantizer = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and "MaxPool" in n.input[0])
    scales = {i.name: i for i in model.graph.initializer}
    for name in quantizer.input[1:2]:  # 200x coarser steps after the first pooling
        scale = scales[name]
        scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 200, name))
    dequantizer = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == quantizer.output[0])
    dequantizer.input[1] = quantizer.input[1]
    onnx.save(model, str(path))
    assert main(["diagnose", str(run), "student.onnxruntime.int8", "--json", str(tmp_path / "d.json")]) == 0
    jumps = json.loads((tmp_path / "d.json").read_text())["jumps"]
    first = jumps[0]  # where the coarse scale is first used (ONNX Runtime shares it with the pool's input quantizer)
    assert first["tensor"] == "/layers/layers.3/MaxPool_output_0" and first["relative_error"] > 0.1
    assert any(quantizer.name in q or quantizer.output[0] in q for q in first["quantizers"]), first["quantizers"]
    out = capsys.readouterr().out
    assert "error jumps at /layers/layers.3/MaxPool_output_0 (MaxPool)" in out


@pytest.mark.parametrize("artifact,words", [("student.tensorrt.int8", "no artifact 'student.tensorrt.int8' in this run"),
                                            ("student.onnxruntime.fp32", "no artifact")])
def test_diagnose_on_an_artifact_it_cannot_compare_is_one_line(int8_run, capsys, artifact, words):
    assert main(["diagnose", str(int8_run), artifact]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_diagnose_on_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path), "student.onnxruntime.int8"]) == 2
    assert "not a run dir" in capsys.readouterr().err


def test_an_openvino_ir_is_compared_tensor_by_tensor(int8_run, tmp_path, capsys):
    assert main(["diagnose", str(int8_run), "student.openvino.fp32", "--json", str(tmp_path / "d.json")]) == 0
    result = json.loads((tmp_path / "d.json").read_text())
    names = [t["tensor"] for t in result["tensors"]]
    assert len(names) > 5 and names[-1] == "logits"
    assert all(t["relative_error"] < 1e-4 for t in result["tensors"])  # fp32 IR computes what the ONNX does
    assert capsys.readouterr().out.startswith("student.openvino.fp32 against stages/export/student.onnx:")


def test_a_broken_openvino_quantizer_is_found_where_its_error_enters(int8_run, tmp_path):
    """An int8 IR whose first activation quantizer has 50x coarser steps: the jump is at the tensor it reads."""
    import shutil

    import openvino as ov

    run = shutil.copytree(int8_run, tmp_path / "run")
    folder = run / "stages/build/student.openvino.int8"
    folder.mkdir()
    onnx_path = run / "stages/export/student.onnx"
    from deploy.engines.openvino import nncf_quantize_ir

    calibration = np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)
    model = nncf_quantize_ir(ov.convert_model(str(onnx_path)), calibration)
    first = next(op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
                 and op.input_value(0).get_node().get_type_name() != "Parameter"
                 and op.input_value(0).get_node().get_type_name() != "Constant")
    for port in (3, 4):  # output range 50x wider: every step 50x coarser
        const = first.input_value(port).get_node()
        widened = ov.opset13.constant(const.get_data() * 50)
        first.input(port).replace_source_output(widened.output(0))
    ov.save_model(model, str(folder / "model.xml"))
    record = json.loads((run / "run.json").read_text())
    record["stages"]["build"]["outputs"]["engines"].append(
        {"model": "student", "backend": "openvino", "precision": "int8", "dir": "stages/build/student.openvino.int8",
         "artifact": "stages/build/student.openvino.int8/model.xml"})
    (run / "run.json").write_text(json.dumps(record))
    assert main(["diagnose", str(run), "student.openvino.int8", "--json", str(tmp_path / "d.json")]) == 0
    jumps = json.loads((tmp_path / "d.json").read_text())["jumps"]
    assert all(j["relative_error"] < 0.05 for j in jumps[:1]), jumps  # int8's own small error comes first ...
    broken = next(j for j in jumps if j["relative_error"] > 0.1)  # ... then the coarse quantizer's, where it is read
    assert broken["tensor"] == "/layers/layers.3/MaxPool_output_0", broken
    assert any(first.get_friendly_name() in q and "(feeds it)" in q for q in broken["quantizers"]), broken


def test_diagnose_on_an_engine_that_is_neither_onnx_nor_ir_is_one_line(int8_run, tmp_path, capsys):
    import shutil

    run = shutil.copytree(int8_run, tmp_path / "run")
    record = json.loads((run / "run.json").read_text())
    record["stages"]["build"]["outputs"]["engines"].append(
        {"model": "student", "backend": "tensorrt", "precision": "fp16", "dir": "stages/build/student.tensorrt.fp16",
         "artifact": "stages/build/student.tensorrt.fp16/model.plan"})
    (run / "run.json").write_text(json.dumps(record))
    assert main(["diagnose", str(run), "student.tensorrt.fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is neither an ONNX model nor an OpenVINO IR" in err[0], err
