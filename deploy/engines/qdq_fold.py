"""Store the weights of a Q/DQ ONNX as int8: fold each QuantizeLinear that reads a constant.

Exporters (the TorchScript one behind nncf.strip, ORT's AddQDQPairToWeight) leave every weight in
fp32 behind a QuantizeLinear, so an int8 ONNX is as large as the fp32 one and quantizes its weights
on every load. The QuantizeLinear of a constant is itself a constant: computed here once, with
ONNX's semantics (divide in float32, round half to even, add the zero point, saturate), it becomes
an integer initializer under the QuantizeLinear's output name, so every consumer (usually one
DequantizeLinear) reads exactly what it read before. Activation quantizers are left as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from compress.core.fileio import atomic_path

# Integer types a QuantizeLinear may produce that fit a float32 round trip exactly.
STORED_TYPES = {onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8,
                onnx.TensorProto.INT16: np.int16, onnx.TensorProto.UINT16: np.uint16}
KNOWN_ATTRIBUTES = {"axis", "saturate", "output_dtype", "block_size"}


def quantize_linear(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int,
                    dtype: type) -> np.ndarray:
    """ONNX QuantizeLinear on arrays: per tensor for a 0-D (or one-element) scale, else along `axis`."""
    if scale.ndim == 1 and scale.size != 1:
        shape = [1] * x.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
        zero_point = None if zero_point is None else zero_point.reshape(shape)
    else:
        scale = scale.reshape(())
        zero_point = None if zero_point is None else zero_point.reshape(())
    steps = np.rint(np.divide(x, scale, dtype=np.float32)).astype(np.float64)
    if zero_point is not None:
        steps += zero_point.astype(np.float64)
    limits = np.iinfo(dtype)
    return np.clip(steps, limits.min, limits.max).astype(dtype)


def _fold_one(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """The constant output of a QuantizeLinear of a float32 constant, or None when it is not one."""
    if node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if set(attributes) - KNOWN_ATTRIBUTES or attributes.get("block_size", 0):
        return None  # blocked quantization, or an attribute newer than this code
    has_zero_point = len(node.input) > 2 and bool(node.input[2])
    names = [node.input[0], node.input[1], *([node.input[2]] if has_zero_point else [])]
    if not all(name in constants for name in names):
        return None
    x, scale = (numpy_helper.to_array(constants[name]) for name in names[:2])
    zero_point = numpy_helper.to_array(constants[names[2]]) if has_zero_point else None
    elem_type = (constants[names[2]].data_type if has_zero_point
                 else attributes.get("output_dtype") or onnx.TensorProto.UINT8)
    if (elem_type not in STORED_TYPES or x.dtype != np.float32 or scale.dtype != np.float32 or scale.ndim > 1
            or (zero_point is not None and zero_point.shape != scale.shape)):
        return None
    axis = attributes.get("axis", 1)
    if scale.size != 1 and not (-x.ndim <= axis < x.ndim and x.shape[axis] == scale.size):
        return None
    return quantize_linear(x, scale, zero_point, axis % max(x.ndim, 1), STORED_TYPES[elem_type])


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Every name a node reads, subgraphs (If, Loop, Scan bodies) included, and the graph outputs."""
    used = {output.name for output in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                used |= _used_names(subgraph)
    return used


def fold_weight_quantizers(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A copy of `model` whose constant QuantizeLinear nodes are integer initializers; and what changed."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    overridable = {value.name for value in graph.input}  # an initializer that is also an input is a default
    constants = {t.name: t for t in graph.initializer if t.name not in overridable}
    outputs = {value.name for value in graph.output}
    kept, stored, candidates = [], [], set()
    for node in graph.node:
        quantized = None if node.output[0] in outputs else _fold_one(node, constants)
        if quantized is None:
            kept.append(node)
            continue
        stored.append(numpy_helper.from_array(quantized, node.output[0]))
        candidates.update(name for name in node.input if name)
    if stored and folded.ir_version >= 4:  # before IR 4 every initializer had to be a graph input too
        del graph.node[:]
        graph.node.extend(kept)
        used = _used_names(graph)
        unused = candidates - used
        remaining = [t for t in graph.initializer if t.name not in unused]
        del graph.initializer[:]
        graph.initializer.extend(remaining + stored)
        names = {t.name for t in stored}
        value_info = [v for v in graph.value_info if v.name not in names]
        del graph.value_info[:]
        graph.value_info.extend(value_info)
    else:
        folded, stored, unused = model, [], set()
    stats = {"weights_folded": len(stored), "fp32_initializers_removed": len(unused),
             "quantizers_kept": sum(n.op_type == "QuantizeLinear" for n in folded.graph.node),
             "bytes_before": model.ByteSize(), "bytes_after": folded.ByteSize()}
    return folded, stats


def fold_file(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Fold the weight quantizers of the ONNX file `src` into `dst` (may be `src`); stats in file bytes."""
    src, dst = Path(src), Path(dst)
    bytes_before = src.stat().st_size
    folded, stats = fold_weight_quantizers(onnx.load(str(src)))
    with atomic_path(dst) as tmp:
        onnx.save(folded, str(tmp))
    stats.update(bytes_before=bytes_before, bytes_after=dst.stat().st_size)
    return stats
