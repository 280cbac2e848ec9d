"""int8 ONNX that is int8: the QuantizeLinear of every constant weight is folded into an int8 initializer.

Exact ONNX semantics (round half to even, saturation, per-axis scales), identical outputs in ONNX
Runtime, OpenVINO reads the result, and the ORT int8 engine and the Q/DQ export store int8 weights.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploy.engines import get_engine
from deploy.engines.qdq_fold import fold_file, fold_weight_quantizers
from deploy.engines.interface import read_sidecar
from deploy.runner.sessions import openvino_core

CHANNELS = [3, 64, 128, 160, 160]  # about 1.1 MB of fp32 weights


def conv_net(path, channels=CHANNELS, seed=0):
    """Conv-ReLU blocks, global pooling and a classifier, written as fp32 ONNX."""
    rng = np.random.default_rng(seed)
    nodes, weights, x = [], [], "input"
    for i, (cin, cout) in enumerate(zip(channels, channels[1:])):
        w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * np.float32((2 / (cin * 9)) ** 0.5)
        weights += [numpy_helper.from_array(w, f"conv{i}.weight"),
                    numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32) * 0.1, f"conv{i}.bias")]
        nodes += [helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"])]
        x = f"relu{i}"
    weights += [numpy_helper.from_array(rng.standard_normal((10, channels[-1])).astype(np.float32) * 0.1, "fc.weight"),
                numpy_helper.from_array(np.zeros(10, np.float32), "fc.bias")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"]), helper.make_node("Flatten", ["pool"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "net",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def ort_qdq(fp32, path, per_channel=True, weight_type="int8", seed=1):
    """ORT static QDQ quantization that keeps each weight fp32 behind a QuantizeLinear (the exporters' form)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    batches = iter([{"input": b} for b in np.random.default_rng(seed).standard_normal((4, 16, 3, 8, 8), np.float32)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    quantize_static(str(fp32), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8,
                    extra_options={"AddQDQPairToWeight": True})
    return path


def run_ort(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def inputs():
    return np.random.default_rng(2).standard_normal((64, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def fp32_net(tmp_path_factory):
    return conv_net(tmp_path_factory.mktemp("int8") / "fp32.onnx")


@pytest.mark.parametrize("per_channel, weight_type", [(True, "int8"), (False, "int8"), (True, "uint8"),
                                                      (False, "uint8")])
def test_folded_weights_are_integer_initializers_with_identical_outputs(fp32_net, inputs, tmp_path, per_channel,
                                                                        weight_type):
    unfolded = ort_qdq(fp32_net, tmp_path / "qdq.onnx", per_channel, weight_type)
    model = onnx.load(str(unfolded))
    weight_qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0].endswith(".weight")]
    assert len(weight_qs) == 5 and all(len(n.input) == 3 for n in weight_qs)  # the unfolded form being tested
    assert {numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == n.input[1])).ndim
            for n in weight_qs} == ({1} if per_channel else {0})

    folded, stats = fold_weight_quantizers(model)
    onnx.checker.check_model(folded, full_check=True)
    initializers = {t.name: t for t in folded.graph.initializer}
    assert not [n.name for n in folded.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in initializers]
    assert not [name for name in initializers if name.endswith(".weight")]  # the fp32 weights are gone
    stored = {n.input[0] for n in folded.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers}
    stored_types = {initializers[name].data_type for name in stored if "weight" in name}
    assert stored_types == {TensorProto.INT8 if weight_type == "int8" else TensorProto.UINT8}
    assert stats["weights_folded"] == 5 and stats["fp32_initializers_removed"] == 5
    assert stats["quantizers_kept"] == sum(n.op_type == "QuantizeLinear" for n in folded.graph.node) > 0

    path = tmp_path / "folded.onnx"
    onnx.save(folded, str(path))
    assert path.stat().st_size <= 0.35 * unfolded.stat().st_size
    reference, result = run_ort(unfolded, inputs), run_ort(path, inputs)
    assert np.abs(result - reference).max() <= 1e-6
    assert np.array_equal(result.argmax(1), reference.argmax(1))


def test_openvino_reads_and_runs_the_folded_model(fp32_net, inputs, tmp_path):
    """OpenVINO compiles the folded file on CPU and agrees with ONNX Runtime to a few output quantization steps.

    Not exactly: the two runtimes requantize between int8 layers with kernels that differ by CPU
    (AVX2, VNNI, AMX); on an AVX2-only EPYC they agree exactly, on a CI machine by up to 5 steps
    of the output's scale (3.8% of the largest logit). Exact folding is checked in ORT above.
    """
    pytest.importorskip("openvino")
    unfolded = ort_qdq(fp32_net, tmp_path / "qdq.onnx")
    stats = fold_file(unfolded, tmp_path / "folded.onnx")
    assert stats["weights_folded"] == 5 and stats["bytes_after"] == (tmp_path / "folded.onnx").stat().st_size
    core = openvino_core()
    compiled = core.compile_model(core.read_model(str(tmp_path / "folded.onnx")), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})  # not bf16 between the int8 layers
    result, reference = compiled(inputs)[0], run_ort(unfolded, inputs)
    assert np.abs(result - reference).max() <= 0.1 * np.abs(reference).max()
    assert np.abs(result - reference).mean() <= 0.01 * np.abs(reference).max()
    assert (result.argmax(1) == reference.argmax(1)).mean() >= 0.9


def single_quantizer(x, scale, zero_point=None, axis=None, output_dtype=None):
    """A graph computing QuantizeLinear of the constant `x` (opset 21), as the graph's only output."""
    names = ["x", "scale", *(["zero_point"] if zero_point is not None else [])]
    attributes = {k: v for k, v in (("axis", axis), ("output_dtype", output_dtype)) if v is not None}
    node = helper.make_node("QuantizeLinear", names, ["q"], **attributes)
    constants = [numpy_helper.from_array(x, "x"), numpy_helper.from_array(scale, "scale")]
    if zero_point is not None:
        constants.append(numpy_helper.from_array(zero_point, "zero_point"))
    if zero_point is not None:
        out_type = helper.np_dtype_to_tensor_dtype(zero_point.dtype)
    else:
        out_type = output_dtype or TensorProto.UINT8
    graph = helper.make_graph([node], "q", [], [helper.make_tensor_value_info("q", out_type, None)], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def folded_value(model):
    """The folded constant of the quantizer in `model`, read through an Identity so it is not a graph output."""
    model.graph.node.append(helper.make_node("Identity", ["q"], ["out"]))
    model.graph.output[0].name = "out"
    folded, stats = fold_weight_quantizers(model)
    assert stats["weights_folded"] == 1 and [n.op_type for n in folded.graph.node] == ["Identity"]
    return numpy_helper.to_array(next(t for t in folded.graph.initializer if t.name == "q"))


TIES = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, 126.5, 127.5, -128.5, 1e6, -1e6, 0.0, 3.0], np.float32)
CASES = {
    "int8 ties and saturation": (TIES, np.float32(1.0), np.int8(0), None, None),
    "uint8 with a zero point": (TIES, np.float32(1.0), np.uint8(128), None, None),
    "int8 nonzero zero point saturates after adding it": (TIES, np.float32(0.5), np.int8(-3), None, None),
    "no zero point is uint8": (np.abs(TIES), np.float32(2.0), None, None, None),
    "output_dtype int8 without a zero point": (TIES, np.float32(1.0), None, None, TensorProto.INT8),
    "per-axis, default axis 1": (np.random.default_rng(0).standard_normal((2, 3, 4), np.float32) * 4,
                                 np.array([0.5, 0.25, 0.125], np.float32), np.array([0, 1, -2], np.int8), None, None),
    "per-axis, axis 0": (np.random.default_rng(1).standard_normal((4, 3), np.float32) * 40,
                         np.array([0.5, 0.25, 1.0, 0.01], np.float32), np.array([3, 0, 250, 7], np.uint8), 0, None),
    "per-axis, negative axis": (np.random.default_rng(2).standard_normal((2, 5), np.float32) * 40,
                                np.linspace(0.1, 1, 5, dtype=np.float32), np.zeros(5, np.int8), -1, None),
    "one-element scale is per tensor": (TIES.reshape(2, 7), np.array([1.0], np.float32), np.array([0], np.int8), 0,
                                        None),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_folding_matches_onnx_quantize_linear_in_the_reference_and_in_ort(case):
    from onnx.reference import ReferenceEvaluator

    x, scale, zero_point, axis, output_dtype = CASES[case]
    model = single_quantizer(x, np.asarray(scale), None if zero_point is None else np.asarray(zero_point), axis,
                             output_dtype)
    reference = ReferenceEvaluator(model).run(None, {})[0]
    runtime = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    folded = folded_value(model)
    assert folded.dtype == reference.dtype and folded.shape == x.shape
    np.testing.assert_array_equal(folded, reference)
    np.testing.assert_array_equal(folded, runtime)


def shared_quantizer_graph():
    """One weight quantizer read by two DequantizeLinear nodes and a Cast, and the weight also read in fp32."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 4)).astype(np.float32)
    constants = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(0.02), "s"),
                 numpy_helper.from_array(np.int8(0), "z"), numpy_helper.from_array(np.float32(0.05), "s2")]
    nodes = [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"]),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w1"]),
             helper.make_node("DequantizeLinear", ["wq", "s2"], ["w2"]),
             helper.make_node("Cast", ["wq"], ["w3"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["x", "w2"], ["b"]),
             helper.make_node("MatMul", ["x", "w3"], ["c"]), helper.make_node("MatMul", ["x", "w"], ["d"]),
             helper.make_node("Sum", ["a", "b", "c", "d"], ["y"])]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_quantizer_with_several_readers_folds_once_and_keeps_a_weight_still_read_in_fp32():
    model = shared_quantizer_graph()
    folded, stats = fold_weight_quantizers(model)
    onnx.checker.check_model(folded, full_check=True)
    assert stats["weights_folded"] == 1 and stats["fp32_initializers_removed"] == 0  # `w` is still read by MatMul
    assert {t.name for t in folded.graph.initializer} == {"w", "s", "z", "s2", "wq"}
    assert [n.op_type for n in folded.graph.node].count("QuantizeLinear") == 0
    x = np.random.default_rng(4).standard_normal((2, 4)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    after = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(after[0], before[0])


def test_activation_quantizers_and_models_without_qdq_are_left_alone(fp32_net):
    model = onnx.load(str(fp32_net))
    folded, stats = fold_weight_quantizers(model)
    assert folded.SerializeToString() == model.SerializeToString()
    assert stats["weights_folded"] == 0 and stats["bytes_after"] == stats["bytes_before"]
    graph_output = single_quantizer(TIES, np.asarray(np.float32(1)), np.asarray(np.int8(0)))  # a graph output
    assert fold_weight_quantizers(graph_output)[1]["weights_folded"] == 0
    overridable = shared_quantizer_graph()  # an initializer that is also a graph input is not a constant
    overridable.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 4]))
    assert fold_weight_quantizers(overridable)[1]["weights_folded"] == 0


def test_the_onnxruntime_int8_engine_stores_int8_weights_from_either_source(fp32_net, inputs, tmp_path):
    """From a Q/DQ source (the quantize stage's) and from its own static quantization: int8 weights, recorded."""
    qdq = ort_qdq(fp32_net, tmp_path / "qdq.onnx")
    engine = get_engine("onnxruntime")
    from_qdq = engine.build(fp32_net, tmp_path / "from-qdq", "int8", sources={"fp32": fp32_net, "qdq": qdq})
    record = read_sidecar(tmp_path / "from-qdq")["weights_int8"]
    assert record["weights_folded"] == 5 and record["bytes_before"] == qdq.stat().st_size
    assert record["bytes_after"] == from_qdq.artifact.stat().st_size <= 0.35 * record["bytes_before"]
    assert np.abs(run_ort(from_qdq.artifact, inputs) - run_ort(qdq, inputs)).max() <= 1e-6

    calibration = np.random.default_rng(5).standard_normal((32, 3, 8, 8)).astype(np.float32)
    static = engine.build(fp32_net, tmp_path / "static", "int8", sources={"fp32": fp32_net}, calibration=calibration)
    record = read_sidecar(tmp_path / "static")["weights_int8"]
    model = onnx.load(str(static.artifact))
    initializers = {t.name for t in model.graph.initializer}
    assert not [n.name for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in initializers]
    assert record["bytes_after"] == static.artifact.stat().st_size <= 0.35 * fp32_net.stat().st_size


def test_the_qdq_export_for_tensorrt_stores_int8_weights_and_stays_in_tensorrt_form(tmp_path):
    """export_qdq (student.qdq.onnx, what the TensorRT build takes): weights int8, parity on the folded file."""
    import torch

    from compress.exporting.trt_lint import lint
    from compress.models import ModelSpec, build_model
    from compress.quantize.nncf_quant import quantize_model, quiet_nncf, save_quantized
    from compress.quantize.strip_to_onnx import export_qdq

    quiet_nncf()
    torch.manual_seed(0)
    spec = ModelSpec("cnn", 1, 10, 8, {"channels": [8, 16]})
    x = np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)
    save_quantized(tmp_path / "q.pt", quantize_model(build_model(spec).eval(), x, target="tensorrt"), spec)
    report = export_qdq(tmp_path / "q.pt", tmp_path / "student.qdq.onnx", x, 17, True, 0.99)
    assert report["passed"] and report["weights_int8"]["weights_folded"] == 3  # two convolutions and the classifier
    assert report["form"]["weights_stored"] == 3 and report["form"]["weights_stored_by_type"] == {"int8": 3}
    assert report["form"]["signed_int8_zero_point_0"] and report["form"]["quantize_nodes"] > 0  # activations
    model = onnx.load(str(tmp_path / "student.qdq.onnx"))
    initializers = {t.name for t in model.graph.initializer}
    assert not [n.name for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in initializers]
    assert lint(model)["clean"], lint(model)["findings"]


def test_qdq_form_counts_stored_weights_and_judges_their_type_for_tensorrt(fp32_net, tmp_path):
    """After folding, the weights' type and zero points are read from their DequantizeLinear nodes."""
    from compress.exporting.qdq_form import qdq_form

    fold_file(ort_qdq(fp32_net, tmp_path / "qdq.onnx", per_channel=False, weight_type="uint8"), tmp_path / "u8.onnx")
    form = qdq_form(tmp_path / "u8.onnx")
    assert form["weights_stored_by_type"]["uint8"] == 5 and form["weights_stored"] >= 5  # (+ int32 biases)
    assert not form["signed_int8_zero_point_0"]
