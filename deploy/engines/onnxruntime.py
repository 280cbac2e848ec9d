"""ONNX Runtime engine (CPU execution provider)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from deploy.engines.base import Engine, Session


class OnnxRuntimeSession(Session):
    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"
    precisions = ("fp32",)

    @classmethod
    def version(cls) -> str | None:
        try:
            import onnxruntime
        except ImportError:
            return None
        return onnxruntime.__version__

    def _build(self, onnx_path: Path, out_dir: Path, precision: str, **options: Any) -> tuple[Path, dict[str, Any]]:
        artifact = out_dir / "model.onnx"
        shutil.copyfile(onnx_path, artifact)
        return artifact, {"providers": ["CPUExecutionProvider"]}

    def load(self, artifact: Path, threads: int | None = None) -> Session:
        return OnnxRuntimeSession(artifact, threads)
