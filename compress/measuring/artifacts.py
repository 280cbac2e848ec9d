"""Open any artifact the toolchain makes as a `Session`: torch checkpoints and every engine file.

The benchmark stage and `compress benchmark FILE` both come through here, so a torch model and an
ONNX / OpenVINO IR / TensorRT plan are measured by the same harness with the same inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from compress.core.errors import UsageError
from deploy.engines.interface import Session

SUFFIX_BACKENDS = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".xml": "openvino",
                   ".plan": "tensorrt", ".engine": "tensorrt", ".trt": "tensorrt"}


class TorchSession(Session):
    """A torch module behind the engines' `Session` interface (inference mode, intra-op threads set)."""

    backend = "torch"

    def __init__(self, model, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()

    def infer(self, x) -> np.ndarray:
        """One float32 batch, or a dict of named arrays (token ids of a text model)."""
        import torch

        with torch.inference_mode():
            if isinstance(x, dict):
                return self.model(**{name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in x.items()}).numpy()
            return self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def resolve(path: str | Path) -> tuple[Path, dict]:
    """An engine folder (with engine.json) or a file -> (artifact file, its sidecar or {})."""
    path = Path(path)
    if path.is_dir():
        sidecar_path = path / "engine.json"
        if not sidecar_path.is_file():
            raise UsageError(f"{path}: a folder without engine.json; name the model file instead")
        sidecar = json.loads(sidecar_path.read_text())
        return path / sidecar["artifact"], sidecar
    if not path.is_file():
        raise UsageError(f"{path}: file not found")
    sidecar_path = path.parent / "engine.json"
    sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.is_file() else {}
    return path, sidecar if sidecar.get("artifact") == path.name else {}


def detect_backend(path: Path, sidecar: dict) -> str:
    if sidecar.get("backend"):
        return sidecar["backend"]
    backend = SUFFIX_BACKENDS.get(path.suffix.lower())
    if backend is None:
        raise UsageError(f"{path}: cannot tell the backend from the suffix '{path.suffix}'; pass --backend "
                         f"({', '.join(sorted(set(SUFFIX_BACKENDS.values())))})")
    return backend


def open_session(path: Path, backend: str, threads: int | None = None, precision: str | None = None):
    """A Session whose `infer(float32 NCHW batch) -> logits`, for any backend the registry knows.

    `precision` asks OpenVINO to compute in fp32, fp16 or bf16 (default: the artifact's engine.json,
    else the plugin's choice); the session's `precision` says what it chose.
    """
    if precision is not None and backend != "openvino":
        raise UsageError(f"--precision: only openvino computes in a precision asked for; {backend} runs the "
                         "types stored in the model")
    if backend == "torch":
        from compress.models import load_model

        model, _ = load_model(path)
        return TorchSession(model, threads)
    from deploy.engines import EngineUnavailable, get_engine

    try:
        engine = get_engine(backend)
    except EngineUnavailable as error:
        raise UsageError(f"--backend: {error}") from None
    if not engine.available():
        raise UsageError(f"--backend: {backend} is not installed on this machine")
    if precision is not None:
        from deploy.runner.sessions import OpenVinoSession

        return OpenVinoSession(path, threads, precision)
    return engine.load(path, threads)


def input_shape(path: Path, backend: str, sidecar: dict) -> tuple[int, ...] | None:
    """The per-sample input shape (without batch), read from the artifact where it records one."""
    for key in ("input_shape", "shape"):
        shape = sidecar.get(key)
        if isinstance(shape, (list, tuple)) and len(shape) >= 2 and all(isinstance(d, int) for d in shape[1:]):
            return tuple(shape[1:])
    if backend == "torch":
        from compress.models import load_state_dict

        _, spec = load_state_dict(path)
        if spec:
            return (spec["in_channels"], spec["input_size"], spec["input_size"])
        return None
    onnx_path = path if path.suffix == ".onnx" else None
    if onnx_path is None and sidecar.get("source_onnx") and Path(sidecar["source_onnx"]).is_file():
        onnx_path = Path(sidecar["source_onnx"])
    if onnx_path is not None:
        import onnx

        dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        shape = tuple(d.dim_value for d in dims[1:])
        return shape if shape and all(shape) else None
    if backend == "openvino":
        from deploy.runner.sessions import openvino_core

        partial = openvino_core().read_model(str(path)).inputs[0].get_partial_shape()
        if partial.rank.is_static and all(d.is_static for d in list(partial)[1:]):
            return tuple(d.get_length() for d in list(partial)[1:])
    return None
