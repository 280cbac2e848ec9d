"""Engine registry: backend name -> Engine class."""

from __future__ import annotations

from deploy.engines.interface import BuiltEngine, Engine, EngineUnavailable, Session, read_sidecar
from deploy.engines.onnxruntime import OnnxRuntimeEngine
from deploy.engines.openvino import OpenVinoEngine
from deploy.engines.tensorrt import TensorRTEngine

ENGINES: dict[str, type[Engine]] = {cls.backend: cls for cls in (OnnxRuntimeEngine, OpenVinoEngine, TensorRTEngine)}


def get_engine(backend: str) -> Engine:
    try:
        return ENGINES[backend]()
    except KeyError:
        raise EngineUnavailable(f"unknown backend '{backend}'; known: {', '.join(ENGINES)}") from None


__all__ = ["ENGINES", "BuiltEngine", "Engine", "EngineUnavailable", "Session", "get_engine", "read_sidecar"]
