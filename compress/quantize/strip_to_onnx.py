"""Q/DQ ONNX of a quantized student (nncf.strip, then the TorchScript exporter), its parity against the
fake-quantized torch model, and its Q/DQ form (compress.exporting.qdq_form).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.distill.train import predict_logits
from compress.exporting.qdq_form import qdq_form
from compress.exporting.torch_to_onnx import export_onnx, onnx_logits, parity, simplify_onnx
from compress.quantize.nncf_quant import load_quantized, strip
from deploy.engines.qdq_fold import fold_file


def export_qdq(checkpoint: Path, path: Path, x: np.ndarray, opset: int, dynamic_batch: bool,
               min_top1_agreement: float, simplify: bool = True) -> dict[str, Any]:
    """Strip the quantized checkpoint to Q/DQ, export it (dynamo=False) and compare it on `x`.

    Simplifying folds the Identity nodes the TorchScript exporter puts in front of zero points, so
    every Q/DQ node reads constants (what TensorRT's parser expects). The weights' QuantizeLinear
    nodes are then folded into int8 initializers; parity is taken on that file, the one that ships.
    """
    quantized, spec, _ = load_quantized(checkpoint)
    example = torch.from_numpy(np.ascontiguousarray(x[:2], dtype=np.float32))
    export_onnx(strip(quantized, example), tuple(x.shape[1:]), path, opset, dynamic_batch)
    if simplify:
        simplify_onnx(path)
    weights_int8 = fold_file(path, path)
    report: dict[str, Any] = parity(predict_logits(quantized, x).numpy(), onnx_logits(path, x))
    report["min_top1_agreement"] = min_top1_agreement
    # A value on a rounding boundary may land one int8 step apart: judge by agreement, report the error.
    report["passed"] = report["top1_agreement"] >= min_top1_agreement
    report["form"] = qdq_form(path)
    report["weights_int8"] = weights_int8
    return report
