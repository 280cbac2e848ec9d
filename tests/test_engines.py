"""Every engine and precision behind one interface: build (with its source), engine.json, load, infer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.config import DataConfig, TrainConfig
from compress.data import load_dataset
from compress.distill.train import fit
from compress.exporting.torch_to_onnx import export_onnx, simplify_onnx
from compress.core.fileio import sha256_file
from compress.models import ModelSpec, build_model
from compress.quantize.nncf_quant import quantize_model, quiet_nncf, strip
from deploy.engines import ENGINES, get_engine

ROOT = Path(__file__).resolve().parents[1]
TARGETS = [(backend, precision) for backend, cls in ENGINES.items() if cls.available() for precision in cls.precisions]
# int8 is built two ways: from the quantize stage's Q/DQ ONNX, or by the engine from the fp32 ONNX
BUILDS = [(b, p, "qdq") for b, p in TARGETS if p == "int8"] + [(b, p, "fp32") for b, p in TARGETS]


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory):
    """A small CNN trained briefly on digits, as fp32 ONNX and as NNCF Q/DQ ONNX."""
    quiet_nncf()
    work = tmp_path_factory.mktemp("engines")
    data = load_dataset(DataConfig(source="digits"), seed=0)
    torch.manual_seed(0)
    model = build_model(ModelSpec("cnn", 1, 10, 8, {"channels": [8, 16]}))
    fit(model, data.train, data.val, TrainConfig(epochs=8, lr=0.01), work / "fit", 0,
        log=lambda _: None)
    fp32, qdq = work / "student.onnx", work / "student.qdq.onnx"
    export_onnx(model, data.input_shape, fp32)
    simplify_onnx(fp32)
    quantized = quantize_model(model, data.x_train[:200])
    export_onnx(strip(quantized, torch.from_numpy(data.x_train[:2])), data.input_shape, qdq)
    return {"data": data, "fp32": fp32, "qdq": qdq, "work": work}


def top1(engine, artifact, data) -> float:
    with engine.load(artifact, threads=1) as session:
        logits = np.concatenate([session.infer(data.x_val[i:i + 64]) for i in range(0, len(data.x_val), 64)])
    return float((logits.argmax(1) == data.y_val).mean())


@pytest.mark.parametrize("backend, precision, source", BUILDS, ids=["-".join(b) for b in BUILDS])
def test_every_backend_and_precision_builds_and_keeps_accuracy(digits_onnx, backend, precision, source):
    with_qdq = source == "qdq"
    data, engine = digits_onnx["data"], get_engine(backend)
    sources = {"fp32": digits_onnx["fp32"], **({"qdq": digits_onnx["qdq"]} if with_qdq else {})}
    out = digits_onnx["work"] / f"{backend}.{precision}.{with_qdq}"
    built = engine.build(digits_onnx["fp32"], out, precision, sources=sources, calibration=data.x_train[:200])

    sidecar = engine.describe(out)
    expected_source = digits_onnx["qdq"] if with_qdq else digits_onnx["fp32"]
    assert sidecar == built.sidecar and built.artifact.is_file()
    assert sidecar["backend"] == backend and sidecar["precision"] == precision and sidecar["version"]
    assert sidecar["input_shape"] == ["batch", 1, 8, 8] and sidecar["build_seconds"] >= 0
    assert sidecar["source_onnx_sha256"] == sha256_file(expected_source)
    if precision == "int8":
        method = sidecar["quantization"]["method"]
        assert ("quantize stage" in method) == with_qdq

    reference = top1(get_engine("onnxruntime"), digits_onnx["fp32"], data)
    accuracy = top1(engine, built.artifact, data)
    assert reference > 0.9
    # fp32: at most one of 360 samples on a decision boundary; fp16 (bf16 on CPUs) and int8: 3 points
    assert abs(accuracy - reference) <= (0.003 if precision == "fp32" else 0.03), (accuracy, reference)


def test_int8_actually_runs_int8_kernels(digits_onnx):
    """The ORT int8 artifact holds QuantizeLinear nodes; OpenVINO's int8 IR holds FakeQuantize (or u8/i8) ops."""
    import onnx

    data = digits_onnx["data"]
    ort_dir, ov_dir = digits_onnx["work"] / "ort-int8", digits_onnx["work"] / "ov-int8"
    ort = get_engine("onnxruntime").build(digits_onnx["fp32"], ort_dir, "int8", sources={"fp32": digits_onnx["fp32"]},
                                          calibration=data.x_train[:100])
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(ort.artifact)).graph.node}
    if "openvino" in ENGINES and ENGINES["openvino"].available():
        ov = get_engine("openvino").build(digits_onnx["fp32"], ov_dir, "int8", sources={"fp32": digits_onnx["fp32"]},
                                          calibration=data.x_train[:100])
        assert "FakeQuantize" in ov.artifact.read_text()


def test_int8_weights_are_seven_bit_where_the_cpu_would_saturate_eight(digits_onnx):
    """On x86 without VNNI or AMX, ORT's u8s8 kernels sum in 16 bits: the build stores weights in [-64, 63]."""
    import onnx
    from onnx import numpy_helper

    from deploy.engines.ort_quantize import saturating_int8_kernels

    data = digits_onnx["data"]
    built = get_engine("onnxruntime").build(digits_onnx["fp32"], digits_onnx["work"] / "ort-int8-bits", "int8",
                                            sources={"fp32": digits_onnx["fp32"]}, calibration=data.x_train[:100])
    model = onnx.load(str(built.artifact))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and numpy_helper.to_array(t).ndim == 4]
    assert len(weights) == 2  # the two convolutions
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    quantization = built.sidecar["quantization"]
    if saturating_int8_kernels():
        assert largest <= 64 and quantization["weight_bits"] == 7 and "VNNI" in quantization["weight_bits_reason"]
    else:
        assert largest > 64 and "weight_bits" not in quantization


def test_int8_without_qdq_or_calibration_is_refused(digits_onnx, tmp_path):
    from deploy.engines import EngineUnavailable

    with pytest.raises(EngineUnavailable, match="calibration"):
        get_engine("onnxruntime").build(digits_onnx["fp32"], tmp_path / "x", "int8", sources={})


def test_an_engine_that_is_not_installed_is_a_config_error(tiny_config, write_pipeline, tmp_path):
    """openvino hidden from the interpreter: `compress validate` names the file and field, exit 2."""
    hidden = tmp_path / "hide"
    (hidden / "openvino").mkdir(parents=True)
    (hidden / "openvino" / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    tiny_config["stages"]["build"]["targets"] = ["onnxruntime:fp32", "openvino:int8"]
    path = write_pipeline(tiny_config)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden), str(ROOT)])}
    result = subprocess.run([sys.executable, "-m", "compress", "validate", str(path)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: stages.build.targets: openvino is not installed here (pip install openvino)"]


@pytest.mark.parametrize("target, words", [
    ("onnxruntime:fp16", "onnxruntime builds fp32, int8, not 'fp16'"),
    ("openvino:int4", "openvino builds fp32, bf16, fp16, int8, not 'int4'"),
])
def test_a_precision_an_engine_cannot_build_is_a_config_error(tiny_config, target, words):
    from compress.runner import parse_pipeline
    from compress.core.errors import ConfigError

    tiny_config["stages"]["build"]["targets"] = [target]
    with pytest.raises(ConfigError) as error:
        parse_pipeline(tiny_config, "p.yaml")
    assert error.value.path == "stages.build.targets" and words in error.value.message
