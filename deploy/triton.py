"""Triton Inference Server model repository: `<root>/<name>/config.pbtxt` + `<root>/<name>/1/model.*`.

The ONNX runs under Triton's onnxruntime backend anywhere; a TensorRT plan (only where one was
built, on the GPU that will serve it) runs under the tensorrt backend. The batch axis becomes
Triton's implicit batch (`max_batch_size`), with dynamic batching so single requests are merged.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from compress.core.fileio import write_text

TRITON_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.INT32: "TYPE_INT32",
                onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.BOOL: "TYPE_BOOL"}
PLATFORMS = {".onnx": ("onnxruntime_onnx", "model.onnx"), ".plan": ("tensorrt_plan", "model.plan")}


def tensor_specs(onnx_path: Path) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) as {name, data_type, dims}, dims without the batch axis (-1 = dynamic)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> dict:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim][1:]
        return {"name": value.name, "data_type": TRITON_TYPES.get(tensor.elem_type, "TYPE_FP32"), "dims": dims}

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def config_pbtxt(name: str, platform: str, inputs: list[dict], outputs: list[dict], max_batch_size: int,
                 preferred_batch_sizes: list[int], max_queue_delay_us: int = 100) -> str:
    def block(kind: str, specs: list[dict]) -> list[str]:
        lines = [f"{kind} ["]
        for index, spec in enumerate(specs):
            dims = ", ".join(str(d) for d in spec["dims"])
            lines += ["  {", f'    name: "{spec["name"]}"', f"    data_type: {spec['data_type']}",
                      f"    dims: [ {dims} ]", "  }" + ("," if index < len(specs) - 1 else "")]
        return lines + ["]"]

    preferred = sorted({b for b in preferred_batch_sizes if 1 < b <= max_batch_size})
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch_size}",
             *block("input", inputs), *block("output", outputs), "dynamic_batching {"]
    if preferred:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]")
    lines += [f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}"]
    return "\n".join(lines) + "\n"


def write_model_repository(root: Path, name: str, onnx_path: Path, max_batch_size: int,
                           preferred_batch_sizes: list[int], plan_path: Path | None = None) -> Path:
    """Write one model (version 1) into the repository at `root`; return its folder.

    The tensor names and dims come from the ONNX; the artifact is the plan when given.
    """
    artifact = Path(plan_path) if plan_path is not None else Path(onnx_path)
    platform, filename = PLATFORMS[artifact.suffix]
    inputs, outputs = tensor_specs(Path(onnx_path))
    model_dir = Path(root) / name
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(artifact, version_dir / filename)
    write_text(model_dir / "config.pbtxt",
               config_pbtxt(name, platform, inputs, outputs, max_batch_size, preferred_batch_sizes))
    return model_dir
