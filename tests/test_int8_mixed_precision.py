"""Mixed precision: an OpenVINO int8 engine whose ops left in float compute in bf16, on the host and the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.cli import main
from compress.core.fileio import read_json
from compress.exporting.torch_to_onnx import export_onnx
from compress.quantize.nncf_quant import quantize_model, strip
from deploy.engines import get_engine
from deploy.runner import inference
from deploy.runner.harness import cpu_features
from tests.quant_models import OutlierCNN

needs_bf16 = pytest.mark.skipif(not {"avx512_bf16", "amx_bf16"} & set(cpu_features()),
                                reason="this CPU has no bf16 arithmetic (the plugin would compute in f32)")


@pytest.fixture(scope="module")
def calibration():
    return np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory, calibration):
    """fp32 ONNX and a Q/DQ ONNX with conv2 left in float (as accuracy control leaves a layer)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("mixed")
    model = OutlierCNN(1, 10, 8).eval()
    export_onnx(model, (1, 8, 8), folder / "model.onnx")
    quantized = quantize_model(model, calibration, ignored_scope=["conv2"])
    export_onnx(strip(quantized, torch.from_numpy(calibration[:2])), (1, 8, 8), folder / "model.qdq.onnx")
    return folder / "model.onnx"


def build_int8(onnx_model, out_dir, **options):
    sources = {"fp32": onnx_model, "qdq": onnx_model.with_suffix(".qdq.onnx")}
    return get_engine("openvino").build(onnx_model, out_dir, "int8", sources=sources, **options)


@needs_bf16
def test_an_int8_engine_with_bf16_float_ops_runs_them_in_bf16(onnx_model, calibration, tmp_path):
    engine = get_engine("openvino")
    plain = build_int8(onnx_model, tmp_path / "int8")
    mixed = build_int8(onnx_model, tmp_path / "mixed", float_precision="bf16")
    assert mixed.sidecar["float_precision"] == "bf16" and "float_precision" not in plain.sidecar
    with engine.load(plain.artifact) as int8, engine.load(mixed.artifact) as int8_bf16:
        assert (int8.precision, int8.inference_precision) == ("int8", "f32")
        assert (int8_bf16.precision, int8_bf16.inference_precision) == ("int8", "bf16")
        a, b = int8.infer(calibration), int8_bf16.infer(calibration)
    assert not np.array_equal(a, b)  # conv2, left in float, did compute in another precision
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9


@needs_bf16
def test_the_device_opens_the_release_at_the_float_precision_of_its_manifest(onnx_model, tmp_path):
    built = build_int8(onnx_model, tmp_path / "release", float_precision="bf16")
    manifest = {"runtime": "openvino", "precision": "int8", "float_precision": "bf16", "model_file": "model.xml"}
    with inference.open_release(built.artifact.parent, manifest) as session:
        assert session.inference_precision == "bf16"
    del manifest["float_precision"]
    with inference.open_release(built.artifact.parent, manifest) as session:
        assert session.inference_precision == "f32"


@pytest.mark.parametrize("build, message", [
    ({"targets": ["onnxruntime:int8"], "int8_float_precision": "bf16"},
     "stages.build.int8_float_precision: applies to the openvino:int8 target"),
    ({"targets": ["openvino:int8"], "int8_float_precision": "bf32"}, "stages.build.int8_float_precision:"),
])
def test_bad_int8_float_precision_is_one_line_and_exit_2(tiny_config, write_pipeline, capsys, build, message):
    tiny_config["stages"]["build"] = build
    path = write_pipeline(tiny_config)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}: {message}" in err, err


@needs_bf16
def test_a_pipeline_builds_mixed_int8_bf16_and_records_it(tiny_config, write_pipeline, tmp_path):
    tiny_config["stages"]["build"] = {"targets": ["openvino:int8"], "int8_float_precision": "bf16"}
    tiny_config["stages"]["benchmark"]["batch_sizes"] = [1]
    path = write_pipeline(tiny_config)
    assert main(["--quiet", "run", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    engine = read_json(tmp_path / "run/run.json")["stages"]["build"]["outputs"]["engines"][0]
    assert engine["float_precision"] == "bf16" and engine["parity"]["passed"]
    assert read_json(tmp_path / "run" / engine["dir"] / "engine.json")["float_precision"] == "bf16"
