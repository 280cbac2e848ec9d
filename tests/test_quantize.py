"""NNCF quantization of a student: PTQ, TensorRT-form Q/DQ, ignored scope, save/load, BN folding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.core.errors import UsageError
from compress.exporting.torch_to_onnx import export_onnx
from compress.models import ModelSpec, build_model
from compress.exporting.qdq_form import qdq_form
from compress.quantize.fold import fold_batchnorm
from compress.quantize.nncf_quant import (NotQuantizable, load_quantized, quantize_model, quantizers, quiet_nncf,
                                          save_quantized, strip, weight_quantizers)
from tests.quant_models import ScaledPixels

SPEC = ModelSpec("cnn", 1, 10, 8, {"channels": [8, 16]})


@pytest.fixture(scope="module")
def student():
    quiet_nncf()
    torch.manual_seed(0)
    return build_model(SPEC).eval()


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)


def test_batchnorm_folds_into_the_convolution_without_changing_outputs(student, inputs):
    import copy

    folded = copy.deepcopy(student)
    assert fold_batchnorm(folded) == 2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.from_numpy(inputs)
    torch.testing.assert_close(folded(x), student(x), atol=1e-5, rtol=1e-5)


def test_ptq_quantizes_every_conv_and_linear_and_stays_close_to_fp32(student, inputs):
    quantized = quantize_model(student, inputs, target="cpu")
    assert len(weight_quantizers(quantized)) == 3  # two convs and the classifier
    x = torch.from_numpy(inputs)
    with torch.no_grad():
        reference, fake_quant = student(x), quantized(x)
    assert not torch.equal(reference, fake_quant)  # quantization happened
    assert (fake_quant - reference).abs().max() < 0.1 * reference.abs().max()


def test_tensorrt_target_exports_signed_int8_with_zero_point_0(student, inputs, tmp_path):
    forms = {}
    for target in ("cpu", "tensorrt"):
        quantized = quantize_model(student, inputs, target=target)
        path = tmp_path / f"{target}.onnx"
        export_onnx(strip(quantized, torch.from_numpy(inputs[:2])), (1, 8, 8), path)
        forms[target] = qdq_form(path)
    assert forms["tensorrt"]["signed_int8_zero_point_0"], forms["tensorrt"]
    assert forms["tensorrt"]["quantize_nodes"] == forms["cpu"]["quantize_nodes"] > 0
    assert forms["cpu"]["by_type"].get("uint8", 0) > 0  # activations after ReLU stay unsigned for CPUs


def test_ignored_scope_keeps_a_module_in_float(student, inputs):
    quantized = quantize_model(student, inputs, ignored_scope=["fc"])
    assert len(weight_quantizers(quantized)) == 2
    assert not any("fc/" in name for name in quantizers(quantized))
    with pytest.raises(UsageError, match="no module 'classifier'"):
        quantize_model(student, inputs, ignored_scope=["classifier"])


def test_a_model_without_quantizable_ops_is_refused(inputs):
    with pytest.raises(NotQuantizable, match="no operation with weights"):
        quantize_model(ScaledPixels(1, 10, 8), inputs)


def test_a_saved_quantized_model_loads_back_with_weights_only(student, inputs, tmp_path):
    quantized = quantize_model(student, inputs, target="tensorrt")
    save_quantized(tmp_path / "q.pt", quantized, SPEC)
    loaded, spec, _ = load_quantized(tmp_path / "q.pt")
    x = torch.from_numpy(inputs)
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))
    assert spec == SPEC
    with pytest.raises(UsageError, match="not a quantized checkpoint"):
        torch.save({"state_dict": {}}, tmp_path / "plain.pt")
        load_quantized(tmp_path / "plain.pt")


def test_a_quantizer_shared_by_a_concat_exports_as_quantize_dequantize(inputs, tmp_path):
    """The inputs of a Concat share one quantizer, which nncf.strip converts at one of its hook points only:
    left at the other, it exported as OpenVINO's FakeQuantize op, which ONNX Runtime cannot load."""
    import onnx
    import onnxruntime as ort

    from tests.quant_models import OutlierCNN

    torch.manual_seed(0)
    model = OutlierCNN(1, 10, 8, channels=(16, 32), extra_convs=3).eval()
    quantized = quantize_model(model, inputs)
    path = tmp_path / "concat.onnx"
    stripped = strip(quantized, torch.from_numpy(inputs[:2]))
    assert not quantizers(stripped)
    export_onnx(stripped, (1, 8, 8), path)
    assert "FakeQuantize" not in {node.op_type for node in onnx.load(path).graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: inputs[:8]})[0]
    with torch.no_grad():
        expected = quantized(torch.from_numpy(inputs[:8])).numpy()
    assert np.abs(out - expected).max() <= 0.05 * np.abs(expected).max()
