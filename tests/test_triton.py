"""Triton model repository export: config.pbtxt from the ONNX, the artifact under version 1."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx_graphs import cnn_onnx

from deploy.triton import config_pbtxt, tensor_specs, write_model_repository


def test_specs_come_from_the_onnx_without_the_batch_axis(tmp_path):
    inputs, outputs = tensor_specs(cnn_onnx(tmp_path / "student.onnx"))
    assert inputs == [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}]
    assert outputs == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]


def test_repository_with_the_onnx_runs_under_onnxruntime(tmp_path):
    onnx_path = cnn_onnx(tmp_path / "student.onnx")
    model_dir = write_model_repository(tmp_path / "model_repository", "digits", onnx_path, 32, [1, 8, 32, 64])
    assert model_dir == tmp_path / "model_repository" / "digits"
    assert (model_dir / "config.pbtxt").read_text() == """name: "digits"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 1, 8, 8 ]
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
dynamic_batching {
  preferred_batch_size: [ 8, 32 ]
  max_queue_delay_microseconds: 100
}
"""
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"))
    assert session.run(None, {"input": np.zeros((3, 1, 8, 8), np.float32)})[0].shape == (3, 10)


def test_repository_with_a_plan_uses_the_tensorrt_backend(tmp_path):
    onnx_path = cnn_onnx(tmp_path / "student.onnx")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized engine")
    model_dir = write_model_repository(tmp_path / "repo", "digits_fp16", onnx_path, 16, [16], plan_path=plan)
    config = (model_dir / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in config and "max_batch_size: 16" in config
    assert (model_dir / "1" / "model.plan").read_bytes() == b"serialized engine"
    assert not (model_dir / "1" / "model.onnx").exists()


def test_two_outputs_are_listed_comma_separated():
    specs = [{"name": "a", "data_type": "TYPE_FP32", "dims": [4]}, {"name": "b", "data_type": "TYPE_FP16", "dims": [-1]}]
    text = config_pbtxt("m", "onnxruntime_onnx", specs[:1], specs, 8, [])
    assert "  },\n  {\n    name: \"b\"\n    data_type: TYPE_FP16\n    dims: [ -1 ]" in text
    assert "preferred_batch_size" not in text
