"""The export stage's TensorRT block: the FP16 ONNX copy and trt_lint.json.

Lint findings are warnings, unless a TensorRT target is asked for: then they stop the run at
export, on the CPU, instead of on the device at deploy time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import StageFailed
from compress.exporting.torch_to_onnx import onnx_logits, parity
from compress.core.fileio import write_json
from compress.exporting.fp16 import write_fp16_copy
from compress.exporting.trt_lint import lint, summary_line


def tensorrt_targets(pipeline) -> list[str]:
    build = pipeline.stages.get("build")
    return [t for t in getattr(build, "targets", []) if t.startswith("tensorrt:")]


def tensorrt_key_material(pipeline) -> dict[str, Any]:
    """Whether lint findings stop the run depends on the build targets."""
    return {"tensorrt_targets": tensorrt_targets(pipeline)}


def export_for_tensorrt(ctx, onnx_path: Path, x: np.ndarray) -> dict[str, Any]:
    """Write student.fp16.onnx and trt_lint.json; return the export outputs they add."""
    fp16_path = write_fp16_copy(onnx_path, ctx.stage_dir / "student.fp16.onnx")
    fp16_parity = parity(onnx_logits(onnx_path, x), onnx_logits(fp16_path, x))
    ctx.log(f"student.fp16.onnx: max abs error {fp16_parity['max_abs_error']:.2e} vs fp32 ONNX, "
            f"top-1 agreement {fp16_parity['top1_agreement']:.4f}")
    graphs = {"student.onnx": onnx_path}
    qdq = ctx.stage_dir / "student.qdq.onnx"
    if qdq.is_file():
        graphs["student.qdq.onnx"] = qdq
    reports = {name: lint(path) for name, path in graphs.items()}
    strict = bool(tensorrt_targets(ctx.pipeline))
    lint_path = ctx.stage_dir / "trt_lint.json"
    write_json(lint_path, {"clean": all(r["clean"] for r in reports.values()), "enforced": strict,
                           "fp16_parity": fp16_parity, "graphs": reports})
    for name, report in reports.items():
        line = summary_line(name, report)
        if not report["clean"] and strict:
            raise StageFailed("export", f"{line} (tensorrt is a build target; details in {lint_path})")
        ctx.log(line if report["clean"] else f"warning: {line}")
    return {"onnx_fp16": ctx.relative(fp16_path), "trt_lint": ctx.relative(lint_path)}
