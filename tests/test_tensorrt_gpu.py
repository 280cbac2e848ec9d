"""TensorRT for real: fp32/fp16/int8 engines of the digits student against ONNX Runtime.

Runs only where a CUDA GPU and the `tensorrt` package are present (`pytest -m gpu`); skipped here.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from compress.cli import main
from compress.config import DataConfig
from compress.data import load_dataset
from compress.core.fileio import read_json
from deploy.engines import get_engine, read_sidecar
from deploy.engines.tensorrt import TensorRTEngine, cuda_gpu


def tensorrt_importable() -> bool:
    return TensorRTEngine.version() is not None


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(cuda_gpu() is None or not tensorrt_importable(),
                                 reason="needs a CUDA GPU and the tensorrt Python package")]


def onnx_logits(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def agreement(a, b) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from conftest import TINY
    import copy
    import yaml

    config = copy.deepcopy(TINY)
    config["student"] = {"model": "cnn", "kwargs": {"channels": [8, 16, 32]}}
    config["stages"]["build"] = {"targets": ["onnxruntime", "tensorrt", "tensorrt:fp16", "triton"],
                                 "tensorrt": {"min_batch": 1, "opt_batch": 8, "max_batch": 32}}
    folder = tmp_path_factory.mktemp("digits")
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = folder / "run"
    assert main(["--quiet", "run", str(path), "--run-dir", str(run_dir)]) == 0
    data = load_dataset(DataConfig(source="digits", val_fraction=0.25), seed=0)
    return run_dir, data.x_val.astype(np.float32)


def test_fp32_and_fp16_engines_are_built_benchmarked_and_match_onnx_runtime(digits_run):
    run_dir, x = digits_run
    build = read_json(run_dir / "run.json")["stages"]["build"]["outputs"]
    assert build["deferred"] == []
    engines = {e["precision"]: e for e in build["engines"] if e["backend"] == "tensorrt"}
    reference = onnx_logits(run_dir / "stages/export/student.onnx", x)
    for precision, atol, min_agreement in (("fp32", 1e-3, 1.0), ("fp16", 5e-2, 0.99)):
        sidecar = read_sidecar(run_dir / engines[precision]["dir"])
        assert sidecar["gpu"] and sidecar["compute_capability"] and sidecar["tensorrt_version"]
        with get_engine("tensorrt").load(run_dir / engines[precision]["artifact"]) as session:
            for batch in (1, 7, 32):  # the whole profile: min, an odd size, max
                out = session.infer(x[:batch])
                assert out.shape == (batch, 10) and np.abs(out - reference[:batch]).max() < atol
            out = np.concatenate([session.infer(x[i:i + 32]) for i in range(0, len(x), 32)])
        assert agreement(out, reference) >= min_agreement
    rows = read_json(run_dir / "stages/benchmark/results.json")["rows"]
    assert {r["precision"] for r in rows if r["backend"] == "tensorrt"} == {"fp32", "fp16"}
    triton = build["triton"][0]
    assert triton["format"] == "tensorrt_plan" and (run_dir / triton["dir"] / "1" / "model.plan").is_file()


def test_int8_engine_from_a_qdq_onnx_matches_onnx_runtime(digits_run, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    run_dir, x = digits_run
    fp32 = run_dir / "stages/export/student.onnx"

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": x[i:i + 32]} for i in range(0, 128, 32)])

        def get_next(self):
            return next(self.batches, None)

    qdq = tmp_path / "student.qdq.onnx"
    quantize_static(str(fp32), str(qdq), Batches(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    built = get_engine("tensorrt").build(fp32, tmp_path / "student.tensorrt.int8", "int8",
                                         sources={"fp32": fp32, "qdq": qdq}, max_batch=32,
                                         timing_cache=tmp_path / "timing.cache")
    assert built.sidecar["source_onnx"] == str(qdq) and (tmp_path / "timing.cache").stat().st_size > 0
    with get_engine("tensorrt").load(built.artifact) as session:
        out = np.concatenate([session.infer(x[i:i + 32]) for i in range(0, len(x), 32)])
    assert agreement(out, onnx_logits(qdq, x)) >= 0.97
    assert agreement(out, onnx_logits(fp32, x)) >= 0.95
