"""ONNX export and parity checks, shared by the export stage and the quantized path."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_onnx(model: torch.nn.Module, input_shape: tuple[int, ...], path: Path, opset: int = 17,
                dynamic_batch: bool = True) -> None:
    """TorchScript-based exporter (dynamo=False): it also handles fake-quantized models."""
    model = model.eval()
    dummy = torch.randn(2, *input_shape)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(path), opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=axes, dynamo=False)
    onnx.checker.check_model(str(path), full_check=True)


def simplify_onnx(path: Path) -> bool:
    """Fold constants and drop redundant nodes with onnxslim when it is installed."""
    try:
        import onnxslim
    except ImportError:
        return False
    model = onnxslim.slim(str(path))
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return True


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """Outputs of an ONNX file on `x` in ONNX Runtime (CPU): the reference side of every ONNX parity check."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max/mean abs error of logits and top-1 agreement between two output sets."""
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    return {
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()) if len(reference) else 1.0,
        "samples": int(len(reference)),
    }
