"""TensorRT lint on the CPU: each planted defect is caught, a good graph is clean."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from onnx_graphs import cnn_onnx, qdq_conv_graph

from compress.exporting.trt_lint import lint, summary_line


def checks(report: dict) -> list[str]:
    return [f["check"] for f in report["findings"]]


def test_a_good_qdq_graph_is_clean_and_runs(tmp_path):
    model = qdq_conv_graph()
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "good.onnx"
    onnx.save(model, str(path))
    out = ort.InferenceSession(str(path)).run(None, {"input": np.ones((2, 1, 8, 8), np.float32)})[0]
    assert out.shape == (2, 4, 8, 8)

    report = lint(path)
    assert report["clean"] and report["findings"] == [] and report["qdq_nodes"] == 3
    assert "TensorRT lint clean" in summary_line("good.onnx", report)


def test_an_exported_cnn_is_clean(tmp_path):
    report = lint(cnn_onnx(tmp_path / "cnn.onnx"))
    assert report["clean"], report["findings"]
    assert {"Conv", "Relu", "Gemm"} <= set(report["ops"])


def test_uint8_activations_are_flagged_with_the_fix():
    report = lint(qdq_conv_graph(zero_point_type=TensorProto.UINT8, zero_point=128))
    assert checks(report) == ["qdq", "qdq"]  # the Q and the DQ of the input
    finding = report["findings"][0]
    assert finding["node"] == "input_q" and "uint8" in finding["message"] and "signed int8" in finding["message"]
    assert "signedness_to_force=True" in finding["fix"]


def test_a_quantizer_without_zero_point_means_uint8():
    report = lint(qdq_conv_graph(with_zero_point=False))
    assert [f["node"] for f in report["findings"]] == ["input_q"]
    assert "uint8" in report["findings"][0]["message"]


def test_a_nonzero_int8_zero_point_is_flagged():
    report = lint(qdq_conv_graph(zero_point=3))
    assert checks(report) == ["qdq", "qdq"]
    assert "zero point is [3]" in report["findings"][0]["message"]


def test_an_int32_bias_dequantize_gets_the_bias_fix():
    bias = helper.make_node("DequantizeLinear", ["bias_q", "bias_scale"], ["bias"], name="bias_dq")
    model = qdq_conv_graph(extra_node=helper.make_node("Add", ["relu", "bias"], ["biased"], name="add"))
    model.graph.node.insert(0, bias)
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.zeros((4, 1, 1), np.int32), "bias_q"),
                                    onnx.numpy_helper.from_array(np.array(0.001, np.float32), "bias_scale")])
    report = lint(model)
    assert [f["node"] for f in report["findings"]] == ["bias_dq"]
    assert "int32" in report["findings"][0]["message"] and "QuantizeBias" in report["findings"][0]["fix"]


def test_an_unsupported_op_and_a_custom_domain_op_are_flagged():
    det = helper.make_node("Det", ["relu"], ["det"], name="det")
    report = lint(qdq_conv_graph(extra_node=det))
    assert checks(report) == ["op"] and report["findings"][0]["node"] == "det"
    assert "Det is not supported" in report["findings"][0]["message"]

    fused = helper.make_node("FusedConv", ["relu"], ["fused"], name="fused", domain="com.microsoft")
    report = lint(qdq_conv_graph(extra_node=fused))
    assert checks(report) == ["op"] and "com.microsoft::FusedConv" in report["findings"][0]["message"]


def test_a_dynamic_axis_other_than_the_batch_is_flagged():
    report = lint(qdq_conv_graph(input_shape=("batch", 1, "height", "width")))
    assert checks(report) == ["dynamic_axes"]
    assert "dynamic axes [2, 3]" in report["findings"][0]["message"]
    assert lint(qdq_conv_graph(input_shape=("batch", 1, 8, 8)))["clean"]


def test_an_opset_outside_the_parser_range_is_flagged():
    report = lint(qdq_conv_graph(opset=22))
    assert checks(report) == ["opset"] and "opset 22" in report["findings"][0]["message"]
    line = summary_line("student.onnx", report)
    assert line.startswith("student.onnx: TensorRT lint: opset 22") and "fix:" in line


def test_onnx_runtime_symmetric_int8_qdq_of_the_cnn_is_clean(tmp_path):
    """A Q/DQ student as TensorRT wants it: signed int8, zero point 0, float biases."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"input": rng.standard_normal((4, 1, 8, 8)).astype(np.float32)} for _ in range(2)])

        def get_next(self):
            return next(self.batches, None)

    fp32, qdq = cnn_onnx(tmp_path / "cnn.onnx"), tmp_path / "cnn.qdq.onnx"
    quantize_static(str(fp32), str(qdq), Batches(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    report = lint(qdq)
    assert report["clean"], report["findings"]
    assert report["qdq_nodes"] > 0


def test_a_zero_point_behind_identity_nodes_asks_for_constant_folding():
    """The TorchScript exporter shares one zero-point constant through Identity nodes (NNCF Q/DQ export)."""
    model = qdq_conv_graph()
    model.graph.node.insert(0, helper.make_node("Identity", ["x_zero_point"], ["x_zero_point_shared"], name="share"))
    model.graph.node[1].input[2] = "x_zero_point_shared"  # the input QuantizeLinear
    report = lint(model)
    assert [(f["check"], f["node"]) for f in report["findings"]] == [("qdq", "input_q")]
    assert "through 1 Identity node(s)" in report["findings"][0]["message"]
    assert "onnxslim" in report["findings"][0]["fix"]
