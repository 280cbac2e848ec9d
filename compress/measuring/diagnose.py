"""Where an engine's outputs start to diverge from its reference, tensor by tensor (Polygraphy's approach).

An OpenVINO IR is compared the same way, its tensors computed by the CPU plugin (diagnose_ir.py).

Both ONNX graphs (the exported fp32 student, and the engine's ONNX: an int8 Q/DQ model keeps the float
tensors' names beside its quantizers) get every intermediate float tensor marked as an output and run in
ONNX Runtime on the same val inputs, without the fusions that would hide them (so an int8 graph runs its
quantizers as written: what its int8 kernels approximate to within rounding). The tensors both graphs hold are compared in the reference's
execution order; the first whose relative error jumps (more than twice every error before it, and over
1e-3) is where the engine stops computing what the model computes, and the quantizers around it say why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import UsageError
from compress.core.fileio import read_json

JUMP = 2.0        # an error this many times every error before it is a jump ...
MIN_ERROR = 1e-3  # ... when it is also at least this large (relative L2)


def engine_entry(run_dir: Path, artifact: str) -> dict[str, Any]:
    """The build's record of `artifact` (student.onnxruntime.int8, or its path); one line listing them otherwise."""
    record = read_json(run_dir / "run.json")
    engines = ((record.get("stages", {}).get("build") or {}).get("outputs") or {}).get("engines") or []
    ids = {f"{e['model']}.{e['backend']}.{e['precision']}": e for e in engines}
    found = ids.get(artifact) or next((e for e in engines if artifact in (e.get("artifact"), e.get("dir"))), None)
    if found is None:
        known = ", ".join(ids) or "none (the run has no build stage)"
        raise UsageError(f"{run_dir}: diagnose: no artifact '{artifact}' in this run; its engines: {known}")
    if not str(found.get("artifact", "")).endswith((".onnx", ".xml")):
        raise UsageError(f"{run_dir}: diagnose: {artifact} is neither an ONNX model nor an OpenVINO IR; diagnose "
                         f"compares those (the onnxruntime engine of the same precision shows the same quantizers)")
    export = record["stages"]["export"]["outputs"]
    # A detector's export keeps each model's ONNX forms under its name: the raw form is what engines are built from.
    reference = export["baseline_onnx"] if found["model"] == "baseline" else export.get("onnx") or \
        export[found["model"]]["raw"]
    return {**found, "reference": reference}


def tensor_outputs(path: Path, x) -> tuple[dict[str, np.ndarray], dict[str, str], Any, list[str]]:
    """Every float tensor a node of the graph at `path` produces, on inputs `x`; (values, producing op, graph,
    the model's own outputs)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    producers = {out: node.op_type for node in model.graph.node for out in node.output if out}
    own = [o.name for o in model.graph.output]
    existing = set(own)
    for name in producers:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    # Basic optimizations only: the extended ones fuse DequantizeLinear -> Conv -> Relu -> QuantizeLinear into one
    # int8 kernel, after which a marked intermediate no longer holds the float tensor its name says.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = x if isinstance(x, dict) else {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    values = dict(zip(names, session.run(names, feeds)))
    floats = {k: v for k, v in values.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"}
    return floats, producers, model.graph, own


def quantizers_near(graph, tensor: str) -> list[str]:
    """The Q/DQ nodes that read this tensor, and those feeding the node that makes it."""
    producer = next((n for n in graph.node if tensor in n.output), None)
    feeding = {i for i in (producer.input if producer is not None else [])}
    near = [f"{n.op_type} {n.name or n.output[0]} (reads it)" for n in graph.node
            if tensor in n.input and n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    near += [f"{n.op_type} {n.name or n.output[0]} (feeds it)" for n in graph.node
             if set(n.output) & feeding and n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    return near


def diagnose(run_dir: Path, artifact: str, x, entry: dict[str, Any] | None = None) -> dict[str, Any]:
    """Errors of every shared tensor in execution order, and the first jumps; `entry`: engine_entry's, when
    the caller already looked the artifact up."""
    from compress.measuring.diagnose_ir import fake_quantizers_near, ir_tensor_outputs

    entry = entry or engine_entry(run_dir, artifact)
    reference, ref_ops, _, outputs = tensor_outputs(run_dir / entry["reference"], x)
    is_ir = entry["artifact"].endswith(".xml")
    candidate, cand_ops, graph, _ = (ir_tensor_outputs if is_ir else tensor_outputs)(run_dir / entry["artifact"], x)
    near = (lambda name: fake_quantizers_near(graph, name)) if is_ir else (lambda name: quantizers_near(graph, name))
    # Same name, same producing op, same shape: ONNX Runtime's quantizer drops a Relu after a Conv (the
    # quantizer's zero point clips instead) and gives the Conv's output the Relu's name, which is no longer a Relu.
    # OpenVINO names its ops otherwise (Convolution, not Conv): there the name and shape match.
    order = [name for name in ref_ops if name in reference and name in candidate
             and (is_ir or ref_ops[name] == cand_ops.get(name) or name in outputs)
             and reference[name].shape == candidate[name].shape]
    tensors, worst, jumps = [], 0.0, []
    for name in order:
        a, b = reference[name].astype(np.float64), candidate[name].astype(np.float64)
        error = float(np.linalg.norm(a - b) / (np.linalg.norm(a) + 1e-12))
        row = {"tensor": name, "op": ref_ops[name], "relative_error": error,
               "max_abs_error": float(np.abs(a - b).max()) if a.size else 0.0}
        if error >= MIN_ERROR and error > JUMP * worst:
            jumps.append({**row, "quantizers": near(name)})
        worst = max(worst, error)
        tensors.append(row)
    return {"artifact": artifact, "reference": entry["reference"], "engine_onnx": entry["artifact"],
            "samples": int(len(next(iter(x.values()))) if isinstance(x, dict) else len(x)),
            "tensors": tensors, "jumps": jumps}


def describe(result: dict[str, Any], shown: int = 3) -> list[str]:
    lines = [f"{result['artifact']} against {result['reference']}: {len(result['tensors'])} shared tensors compared "
             f"on {result['samples']} val inputs"]
    if not result["jumps"]:
        final = result["tensors"][-1]["relative_error"] if result["tensors"] else 0.0
        return lines + [f"no jump: the error grows smoothly to {final:.2e} (relative L2) at the output"]
    for jump in result["jumps"][:shown]:
        lines.append(f"error jumps at {jump['tensor']} ({jump['op']}): relative {jump['relative_error']:.2e}, "
                     f"max |diff| {jump['max_abs_error']:.2e}")
        lines += [f"    {q}" for q in jump["quantizers"][:4]]
    return lines
