"""Memory of resnet32x4 (teacher) and resnet8x4 (student) artifacts, each alone in a fresh process.

What `stages.benchmark.memory` measures (compress/measuring/footprint.py), over the artifacts the build stage
makes: torch checkpoint, ONNX Runtime fp32/int8, OpenVINO fp32/int8 (int8 by the engine's own
PTQ from the fp32 ONNX). Each is measured `--repeats` times at batch 1 and 32; the table gives the
median and the range, so the number's own repeatability shows. For contrast, the last column is
what the old in-process reading gave: the peak resident memory of this process (torch imported,
every artifact loaded one after the other) while the artifact ran.

    python benchmarks/memory.py [--repeats 3] [--threads 2]
    python benchmarks/memory.py --smoke    # the student at 8x8, batch 1, once: checks that the script runs
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.measuring.artifacts import open_session  # noqa: E402
from deploy.runner.harness import peak_rss_mb, random_inputs, reset_peak_rss  # noqa: E402
from compress.exporting.torch_to_onnx import export_onnx, simplify_onnx  # noqa: E402
from compress.measuring.footprint import measure_footprint  # noqa: E402
from compress.models import ModelSpec, build_model, save_checkpoint  # noqa: E402
from compress.measuring.environment import artifact_mb  # noqa: E402
from deploy.engines import get_engine  # noqa: E402

ENGINES = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8")]
MODELS = {"teacher": "resnet32x4", "student": "resnet8x4"}
SMOKE = {"repeats": 1, "models": ["student"], "batches": [1], "size": 8, "threads": 1}


def build_artifacts(work: Path, models: list[str], shape: tuple[int, ...]) -> list[tuple[str, str, str, Path]]:
    """(model, backend, precision, file) for the teacher and the student, as the build stage lays them out."""
    calibration = np.random.default_rng(0).standard_normal((64, *shape)).astype(np.float32)
    artifacts = []
    for name in models:
        torch.manual_seed(0)
        spec = ModelSpec(MODELS[name], 3, 100, shape[1])
        model = build_model(spec).eval()
        checkpoint = work / f"{name}.pt"
        save_checkpoint(checkpoint, model, spec)
        artifacts.append((name, "torch", "fp32", checkpoint))
        onnx_path = work / f"{name}.onnx"
        export_onnx(model, shape, onnx_path)
        simplify_onnx(onnx_path)
        for backend, precision in ENGINES:
            built = get_engine(backend).build(onnx_path, work / f"{name}.{backend}.{precision}", precision,
                                              sources={"fp32": onnx_path}, calibration=calibration)
            artifacts.append((name, backend, precision, built.artifact))
    return artifacts


def in_process_peak(path: Path, backend: str, shape: tuple[int, ...], batch: int, threads: int) -> float:
    reset_peak_rss()
    with open_session(path, backend, threads) as session:
        for x in random_inputs(shape, batch, seed=batch, count=3):
            session.infer(x)
        return peak_rss_mb()


def median_range(values: list[float]) -> str:
    spread = max(values) - min(values)
    return f"{np.median(values):.0f}" + (f" ({min(values):.0f}-{max(values):.0f})" if spread >= 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--models", type=lambda v: v.split(","), default=list(MODELS), help="teacher,student")
    parser.add_argument("--batches", type=lambda v: [int(b) for b in v.split(",")], default=[1, 32])
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    parser.add_argument("--smoke", action="store_true", help="smallest sizes, once: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    torch.set_num_threads(args.threads)
    shape = (3, args.size, args.size)
    with tempfile.TemporaryDirectory(prefix="memory-") as work:
        artifacts = build_artifacts(Path(work), args.models, shape)
        print(f"{len(artifacts)} artifacts built; measuring", flush=True)
        print()
        largest = max(args.batches)
        print("| model | backend | precision | size MB | runtime MB | "
              + " | ".join(f"+ load and run b{b} | peak b{b}" for b in args.batches) + f" | in-process peak b{largest} |")
        print("|---|---|---|---:|---:|" + "---:|---:|" * len(args.batches) + "---:|")
        for model, backend, precision, path in artifacts:
            cells = {}
            for batch in args.batches:
                runs = [measure_footprint(path, backend, shape, batch, args.threads) for _ in range(args.repeats)]
                failed = [r["error"] for r in runs if "error" in r]
                if failed:
                    raise SystemExit(f"{model} {backend} {precision} b{batch}: {failed[0]}")
                cells[batch] = runs
            runtime = [r["runtime_mb"] for runs in cells.values() for r in runs]
            print(f"| {model} | {backend} | {precision} | {artifact_mb(path):.2f} | {median_range(runtime)} | "
                  + " | ".join(f"{median_range([r['model_mb'] for r in runs])} | "
                               f"{median_range([r['peak_mb'] for r in runs])}" for runs in cells.values())
                  + f" | {in_process_peak(path, backend, shape, largest, args.threads):.0f} |", flush=True)


if __name__ == "__main__":
    main()
