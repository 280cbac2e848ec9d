"""`compress benchmark FILE`: one ONNX, OpenVINO IR, TensorRT plan or checkpoint, measured ad hoc.

Same harness and same row schema as the pipeline's benchmark stage, without accuracy (there is
no dataset here): latency, throughput, memory (alone in a fresh process), size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from compress.measuring.artifacts import detect_backend, input_shape, open_session, resolve
from deploy.runner.harness import LatencySettings, measure_rounds
from compress.core.errors import UsageError
from compress.measuring.environment import artifact_mb, environment
from compress.measuring.footprint import measure_footprint


def parse_ints(text: str, option: str, count: int | None = None) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option}: expected comma-separated integers, got '{text}'") from None
    if not values or any(v < 1 for v in values) or (count is not None and len(values) != count):
        what = f"{count} positive integers" if count else "positive integers"
        raise UsageError(f"{option}: expected {what}, got '{text}'")
    return values


def benchmark_file(path: str | Path, backend: str | None, batch_sizes: list[int], shape: list[int] | None,
                   threads: int | None, settings: LatencySettings, rounds: int = 3,
                   memory: bool = True, precision: str | None = None) -> dict[str, Any]:
    """Measure one artifact in `rounds` rounds, loading it afresh for each (see `measure_rounds`).

    `precision` asks OpenVINO for a compute precision; each row is labelled with the one that ran
    (OpenVINO's compiled model tells: bf16 by default on a CPU with AMX), not with a guess.
    """
    if settings.runs < 1 or settings.warmup < 0 or settings.min_seconds < 0 or settings.warmup_seconds < 0:
        raise UsageError("--runs: must be >= 1 (and --warmup, --warmup-seconds, --min-seconds >= 0)")
    if rounds < 1:
        raise UsageError(f"--rounds: must be >= 1, got {rounds}")
    artifact, sidecar = resolve(path)
    backend = backend or detect_backend(artifact, sidecar)
    threads = threads or os.cpu_count() or 1
    sample_shape = tuple(shape) if shape else None

    def load() -> Any:
        try:
            return open_session(artifact, backend, threads, precision)
        except UsageError:
            raise
        except Exception as error:  # a corrupt or foreign file: name it, one line
            raise UsageError(f"{artifact}: cannot be loaded by {backend}: {str(error).splitlines()[0]}") from None

    ran = None

    def check(session: Any) -> None:
        """Before any timing: the input shape is known and one batch runs, or the user hears why not."""
        nonlocal sample_shape, ran
        ran = getattr(session, "precision", None)
        sample_shape = sample_shape or input_shape(artifact, backend, sidecar)
        if sample_shape is None:
            raise UsageError(f"{artifact}: the input shape is not recorded in the file; pass --shape C,H,W")
        try:
            session.infer(np.random.default_rng(0).standard_normal((1, *sample_shape)).astype(np.float32))
        except Exception as error:
            raise UsageError(f"{artifact}: inference failed for input shape (N, {', '.join(map(str, sample_shape))}): "
                             f"{str(error).splitlines()[0]}") from None

    with load() as session:  # the shape is needed before the rounds start
        check(session)
    (timings,) = measure_rounds([load], sample_shape, batch_sizes, settings, rounds)
    footprint = measure_footprint(artifact, backend, sample_shape, max(batch_sizes), threads,
                                  precision=precision) if memory else None
    label = ran or sidecar.get("precision") or "fp32"
    rows = [{"model": artifact.stem, "artifact": str(artifact), "backend": backend, "precision": label, **t,
             "size_mb": artifact_mb(artifact), "threads": threads, **({"memory": footprint} if footprint else {})}
            for t in timings]
    return {"env": environment(threads), "input_shape": list(sample_shape), "rows": rows, "memory": footprint}
