"""Where a number was measured: the machine, its CPU, the library versions; and an artifact's size on disk."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from deploy.runner.harness import cpu_features


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int) -> dict[str, Any]:
    """Machine and library versions, so a number can be traced to where it was measured."""
    import torch

    from compress import __version__

    def version(module: str) -> str | None:
        try:
            return __import__(module).__version__
        except Exception:
            return None

    return {
        "cpu": cpu_name(),
        "cpu_features": ", ".join(cpu_features()) or None,
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "compress": __version__,
        "numpy": np.__version__,
        "torch": torch.__version__,
        "onnx": version("onnx"),
        "onnxruntime": version("onnxruntime"),
        "openvino": version("openvino"),
        "nncf": version("nncf"),
        "tensorrt": version("tensorrt"),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def artifact_mb(path: str | os.PathLike) -> float:
    """Size on disk of an artifact with its companion files (an IR's .bin, an ONNX's external data)."""
    path = Path(path)
    companions = [p for p in path.parent.glob(f"{path.stem}.*")
                  if p.is_file() and p != path and p.name != "engine.json" and p.suffix in (".bin", ".data")]
    return round(sum(p.stat().st_size for p in [path, *companions]) / 1e6, 4)
