"""The export stage's TensorRT block: the FP16 ONNX copy and trt_lint.json.

Lint findings stop the run at export, on the CPU, when a TensorRT target is asked for (instead of
on the device at deploy time). Otherwise they are one line of information, and only where TensorRT
could use the ONNX (a deploy with runtime tensorrt, a machine where TensorRT builds); trt_lint.json
keeps them in every case.
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
    if strict:
        for name, report in reports.items():
            line = summary_line(name, report)
            if not report["clean"]:
                raise StageFailed("export", f"{line} (tensorrt is a build target; details in {lint_path})")
            ctx.log(line)
    else:
        note = lint_note(reports, ctx.relative(lint_path), tensorrt_could_use(ctx.pipeline))
        if note:
            ctx.log(note)
    return {"onnx_fp16": ctx.relative(fp16_path), "trt_lint": ctx.relative(lint_path)}


def tensorrt_could_use(pipeline) -> bool:
    """Whether anything of this run may hand the ONNX to TensorRT: a deploy with runtime tensorrt, or a
    machine where TensorRT builds (a tensorrt build target, which enforces the lint, is not asked here)."""
    deploy = pipeline.stages.get("deploy")
    if getattr(deploy, "runtime", None) == "tensorrt":
        return True
    from deploy.engines import get_engine

    return get_engine("tensorrt").available()


def lint_note(reports: dict[str, dict], lint_path: str, could_use: bool) -> str | None:
    """One line of information for the lint findings when no tensorrt target enforces them, and only where
    TensorRT could use the ONNX; else None (trt_lint.json keeps them either way)."""
    found = {name: report for name, report in reports.items() if not report["clean"]}
    if not found or not could_use:
        return None
    lines = "; ".join(summary_line(name, report) for name, report in found.items())
    return f"note: {lines} (matters for TensorRT only; a tensorrt build target would stop here; details in {lint_path})"
