"""The FP16 ONNX copy TensorRT builds fp16 engines from: fp16 inside, fp32 at the edges."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx_graphs import cnn_onnx

from compress.exporting.fp16 import convert_to_fp16, write_fp16_copy
from compress.exporting.trt_lint import lint


def run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_fp16_copy_keeps_the_interface_and_matches_fp32(tmp_path):
    fp32 = cnn_onnx(tmp_path / "cnn.onnx")
    fp16 = write_fp16_copy(fp32, tmp_path / "cnn.fp16.onnx")
    model = onnx.load(str(fp16))

    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    assert {t.data_type for t in model.graph.initializer} == {TensorProto.FLOAT16}
    assert model.graph.node[0].op_type == "Cast" and model.graph.node[-1].op_type == "Cast"
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param  # the batch stays dynamic

    x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    reference, half = run(fp32, x), run(fp16, x)
    assert half.dtype == np.float32 and half.shape == reference.shape
    assert np.abs(reference - half).max() < 1e-2
    assert (reference.argmax(1) == half.argmax(1)).all()
    assert lint(fp16)["clean"]


def test_weights_beyond_the_fp16_range_are_clipped_not_infinite():
    big = numpy_helper.from_array(np.array([1e6, -1e6, 1.5], np.float32), "w")
    graph = helper.make_graph([helper.make_node("Mul", ["input", "w"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])], [big])
    model = convert_to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    weights = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    assert weights.dtype == np.float16 and np.isfinite(weights).all()
    assert weights.tolist() == [65504.0, -65504.0, 1.5]
