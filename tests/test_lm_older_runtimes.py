"""An onnxruntime-genai folder's graph rewritten for older ONNX Runtimes (Python 3.8's 1.19) keeps its meaning.

The rewrite lowers the opset only as far as every operator keeps its schema, drops trailing empty inputs and
"off" attributes, and leaves the weights file untouched. That a real folder then runs on ONNX Runtime 1.19 with
the host's greedy tokens is tests/test_lm_deploy.py's Python 3.8 deploy (where CI has a 3.8 interpreter).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from compress.stages.lm.older_runtimes import lowest_opset, rewrite_for_older_runtimes


def matmul_model(with_cast: bool, stamped: int = 22) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4) / 7, "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y" if not with_cast else "m"])]
    if with_cast:
        nodes.append(helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", stamped)], ir_version=10)


def test_the_opset_is_lowered_only_as_far_as_every_operator_keeps_its_schema():
    assert lowest_opset(matmul_model(with_cast=False)) == 13  # MatMul's schema is opset 13's up to 22
    assert lowest_opset(matmul_model(with_cast=True)) == 21  # Cast changed at 21 (int4 types): no lower


def test_the_rewritten_graph_computes_what_the_stamped_one_did_and_keeps_its_weights_file(tmp_path):
    model = matmul_model(with_cast=True)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data",
              size_threshold=0)
    weights = (tmp_path / "model.onnx.data").read_bytes()
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    before = ort.InferenceSession(str(path)).run(None, {"x": x})[0]

    assert rewrite_for_older_runtimes(path) == {"opset": [22, 21], "inputs": 0, "attributes": 0}
    rewritten = onnx.load(str(path), load_external_data=False)
    assert [(o.domain, o.version) for o in rewritten.opset_import] == [("", 21)]
    assert (tmp_path / "model.onnx.data").read_bytes() == weights  # the weights are not rewritten
    np.testing.assert_array_equal(ort.InferenceSession(str(path)).run(None, {"x": x})[0], before)


def test_trailing_empty_inputs_and_off_attributes_go_the_rest_stays(tmp_path):
    inputs = ["qkv", "", "", "past_k", "past_v", "seqlens", "total", "cos", "sin", "", "", ""]
    off = helper.make_node("GroupQueryAttention", inputs, ["o", "pk", "pv"], domain="com.microsoft", num_heads=4,
                           kv_num_heads=2, softcap=0.0, do_rotary=1, local_window_size=-1)
    capped = helper.make_node("GroupQueryAttention", inputs[:9], ["o2", "pk2", "pv2"], domain="com.microsoft",
                              num_heads=4, kv_num_heads=2, softcap=30.0)
    graph = helper.make_graph([off, capped], "g", [], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22), helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))

    assert rewrite_for_older_runtimes(path) == {"opset": [22, 7], "inputs": 3, "attributes": 1}
    first, second = onnx.load(str(path)).graph.node
    assert list(first.input) == inputs[:9]  # the empty ones inside the list keep their places
    assert {a.name for a in first.attribute} == {"num_heads", "kv_num_heads", "do_rotary", "local_window_size"}
    assert {a.name: helper.get_attribute_value(a) for a in second.attribute}["softcap"] == 30.0  # on: kept
    assert dict((o.domain, o.version) for o in onnx.load(str(path)).opset_import)["com.microsoft"] == 1
