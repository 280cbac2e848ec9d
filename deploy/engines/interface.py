"""One engine interface for every backend, after Polygraphy's runners.

`build` turns an ONNX file into an artifact folder with an `engine.json` sidecar (metadata never
goes into the engine file itself, and it records the model's input specs); `load` opens that
folder as a `Session` whose `infer` maps a float32 NCHW batch, or a dict input name -> array for
a multi-input model, to logits. The sessions are the device runner's (deploy/runner/sessions.py):
one implementation per backend, on the host and on the device.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from compress.core.fileio import read_json, sha256_file, write_json
from deploy.runner.harness import cpu_features
from deploy.runner.sessions import Session

SIDECAR = "engine.json"


class EngineUnavailable(RuntimeError):
    """The backend is not installed here, or cannot build this precision on this machine."""


@dataclass
class BuiltEngine:
    directory: Path
    sidecar: dict[str, Any]

    @property
    def artifact(self) -> Path:
        return self.directory / self.sidecar["artifact"]


class Engine(ABC):
    backend: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    module: ClassVar[str]  # the Python package that runs this backend

    @classmethod
    def version(cls) -> str | None:
        """Installed version, or None when the backend cannot be imported here."""
        try:
            return importlib.import_module(cls.module).__version__
        except ImportError:
            return None

    @classmethod
    def available(cls) -> bool:
        return cls.version() is not None

    def build(self, onnx_path: Path, out_dir: Path, precision: str, **options: Any) -> BuiltEngine:
        if precision not in self.precisions:
            raise EngineUnavailable(f"{self.backend} builds {', '.join(self.precisions)}, not {precision}")
        if not self.available():
            raise EngineUnavailable(f"{self.backend} is not installed")
        out_dir.mkdir(parents=True, exist_ok=True)
        source = self.source(Path(onnx_path), precision, options.get("sources") or {})
        started = time.perf_counter()
        artifact, extra = self._build(source, out_dir, precision, **options)
        sidecar = {
            "backend": self.backend,
            "version": self.version(),
            "precision": precision,
            "artifact": artifact.name,
            "source_onnx": str(source),
            "source_onnx_sha256": sha256_file(source),
            "input_shape": onnx_input_shape(source),
            "inputs": onnx_inputs(source),
            "artifact_sha256": sha256_file(artifact),
            "build_seconds": round(time.perf_counter() - started, 3),
            "cpu_features": cpu_features(),
            **extra,
        }
        write_json(out_dir / SIDECAR, sidecar)
        return BuiltEngine(out_dir, sidecar)

    def source(self, onnx_path: Path, precision: str, sources: dict[str, Path]) -> Path:
        """The ONNX this precision is built from; `sources` maps 'fp32', 'qdq', 'fp16' to files that exist.

        By default int8 starts from the quantize stage's Q/DQ ONNX when there is one (the engine
        quantizes the fp32 ONNX itself otherwise), and every other precision from the fp32 ONNX.
        """
        if precision == "int8" and sources.get("qdq"):
            return Path(sources["qdq"])
        return Path(sources.get("fp32") or onnx_path)

    def describe(self, directory: Path) -> dict[str, Any]:
        """What was built: the engine.json sidecar of an artifact folder."""
        return read_sidecar(directory)

    @abstractmethod
    def _build(self, onnx_path: Path, out_dir: Path, precision: str, **options: Any) -> tuple[Path, dict[str, Any]]:
        """Write the artifact into out_dir; return its path and extra sidecar fields."""

    @abstractmethod
    def load(self, artifact: Path, threads: int | None = None) -> Session:
        """Open an artifact file for inference."""


def onnx_input_shape(path: Path) -> list[int | str]:
    """Shape of the first graph input; a dynamic dimension is its name (e.g. 'batch')."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def onnx_inputs(path: Path) -> list[dict[str, Any]]:
    """Input specs of the graph's real inputs (initializers left out), in graph order.

    Each is {"name", "dtype" (numpy name), "shape" (a dynamic dim is its name)}; an integer input
    that indexes an embedding table (Gather of an initializer) also gets that table's `vocab_size`,
    so random token ids stay inside it.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name: t for t in graph.initializer}
    vocab = {node.input[1]: int(initializers[node.input[0]].dims[0]) for node in graph.node
             if node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in initializers
             and initializers[node.input[0]].dims}
    specs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or f"dim{axis}")
                for axis, d in enumerate(tensor.shape.dim)]
        spec = {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                "shape": dims}
        if value.name in vocab and spec["dtype"].startswith("int"):
            spec["vocab_size"] = vocab[value.name]
        specs.append(spec)
    return specs


def calibration_count(calibration: Any) -> int:
    """Samples in calibration data: rows of an array, of a dict's arrays, or of a list of batches."""
    if calibration is None:
        return 0
    if isinstance(calibration, dict):
        return len(next(iter(calibration.values()))) if calibration else 0
    if isinstance(calibration, (list, tuple)) and calibration and isinstance(calibration[0], dict):
        return sum(calibration_count(batch) for batch in calibration)
    return len(calibration)


def calibration_batches(calibration: Any, inputs: list[dict[str, Any]], batch_size: int = 32) -> list[Any]:
    """Calibration data as the batches a quantizer feeds, each in the model's input dtypes.

    An array (the image case) gives float32 arrays; a dict name -> rows, or a list of such dicts
    (already batches), gives dicts by name, int64 token ids kept int64. A missing input is named.
    """
    import numpy as np

    dtypes = {spec["name"]: spec["dtype"] for spec in inputs}
    if isinstance(calibration, dict):
        total = calibration_count(calibration)
        calibration = [{name: rows[i:i + batch_size] for name, rows in calibration.items()}
                       for i in range(0, total, batch_size)]
    if isinstance(calibration, (list, tuple)) and calibration and isinstance(calibration[0], dict):
        batches = []
        for batch in calibration:
            missing = [name for name in dtypes if name not in batch]
            if missing:
                raise ValueError(f"calibration data lacks input {', '.join(repr(n) for n in missing)} "
                                        f"(the model takes {', '.join(dtypes)})")
            batches.append({name: np.ascontiguousarray(batch[name], dtype=dtype) for name, dtype in dtypes.items()})
        return batches
    return [np.ascontiguousarray(calibration[i:i + batch_size], dtype=np.float32)
            for i in range(0, len(calibration), batch_size)]


def read_sidecar(directory: Path) -> dict[str, Any]:
    return read_json(Path(directory) / SIDECAR)
