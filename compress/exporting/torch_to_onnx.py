"""ONNX export and parity checks, shared by the export stage and the quantized path.

Single-input models (images) export with `export_onnx`; multi-input models (BERT's input_ids,
attention_mask, token_type_ids) with `export_onnx_inputs`, named and with dynamic axes from their
input specs (the dicts `deploy.runner.harness` and `deploy.engines.interface.onnx_inputs` use).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

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


def spec_dynamic_axes(input_specs: list[dict[str, Any]]) -> dict[str, dict[int, str]]:
    """torch.onnx's dynamic_axes from input specs: every string dim is a named dynamic axis; logits by batch."""
    axes = {spec["name"]: {axis: dim for axis, dim in enumerate(spec["shape"]) if isinstance(dim, str)}
            for spec in input_specs}
    batch = next((dims[0] for dims in axes.values() if 0 in dims), None)
    return {**{name: dims for name, dims in axes.items() if dims}, **({OUTPUT_NAME: {0: batch}} if batch else {})}


def export_onnx_inputs(model: torch.nn.Module, input_specs: list[dict[str, Any]],
                       example_inputs: dict[str, torch.Tensor], path: Path, opset: int = 17,
                       dynamic_axes: bool = True) -> None:
    """Export a model whose forward takes the spec's inputs, in spec order, with their names and axes.

    TorchScript exporter (dynamo=False), as `export_onnx`. The example inputs are traced: a padded
    attention mask (some zeros) keeps the masking in the graph whatever the model's shortcuts.
    """
    names = [spec["name"] for spec in input_specs]
    missing = [name for name in names if name not in example_inputs]
    if missing:
        raise ValueError(f"example inputs lack {', '.join(missing)} (the specs name {', '.join(names)})")
    model = model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(example_inputs[name] for name in names), str(path), opset_version=opset,
                          input_names=names, output_names=[OUTPUT_NAME],
                          dynamic_axes=spec_dynamic_axes(input_specs) if dynamic_axes else None, dynamo=False)
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


def onnx_logits(path: Path, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
    """Outputs of an ONNX file on `x` in ONNX Runtime (CPU): the reference side of every ONNX parity check.

    `x` is one float32 batch, or a dict input name -> array fed by name in each input's dtype.
    """
    from deploy.runner.sessions import OnnxRuntimeSession

    if not isinstance(x, dict):
        x = np.ascontiguousarray(x, dtype=np.float32)
    return OnnxRuntimeSession(path, providers=["CPUExecutionProvider"]).infer(x)


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max/mean abs error of logits and top-1 agreement between two output sets."""
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    return {
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()) if len(reference) else 1.0,
        "samples": int(len(reference)),
    }


def parity_at_lengths(model: torch.nn.Module, onnx_path: Path, make_inputs: Callable[[int], dict[str, torch.Tensor]],
                      lengths: list[int], infer: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None
                      ) -> dict[int, dict[str, float]]:
    """`parity` of PyTorch against the ONNX (ONNX Runtime, or `infer`) at each sequence length.

    A dynamic sequence axis is only proven by running it at lengths other than the traced one.
    `make_inputs(length)` returns the named inputs (batch of its choosing); each result also
    records its `sequence_length`.
    """
    model = model.eval()
    results = {}
    for length in lengths:
        inputs = make_inputs(length)
        with torch.no_grad():
            reference = model(**inputs).detach().float().numpy()
        feeds = {name: tensor.numpy() for name, tensor in inputs.items()}
        candidate = infer(feeds) if infer is not None else onnx_logits(onnx_path, feeds)
        results[int(length)] = {**parity(reference, np.asarray(candidate)), "sequence_length": int(length)}
    return results
