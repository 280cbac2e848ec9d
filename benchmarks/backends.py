"""Latency of resnet32x4 (teacher) vs resnet8x4 (student) at 3x32x32 on every CPU backend and precision.

Torch eager and every engine of `deploy/engines` (ONNX Runtime fp32/int8, OpenVINO fp32/bf16/fp16/int8),
batch 1 and 32, medians over interleaved rounds, all in one process so ratios compare like with like. int8 comes
both ways the pipeline builds it: from an NNCF Q/DQ ONNX (what the quantize stage exports) and from
the fp32 ONNX quantized by the engine (ORT static quantization, NNCF PTQ of the OpenVINO model).
Weights are random (latency does not depend on them); calibration uses random normal inputs.
The recommendation is `compress.reporting.verdict.recommend` over these rows (no accuracy gate: random weights).

    python benchmarks/backends.py [--rounds 3] [--runs 30] [--min-seconds 0.2] [--json out.json]
    python benchmarks/backends.py --smoke    # the student alone, 8x8 inputs, 1 round of 1 run: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.measuring.artifacts import TorchSession  # noqa: E402
from deploy.runner.harness import LatencySettings, measure_latency  # noqa: E402
from compress.config import GatesConfig  # noqa: E402
from compress.exporting.torch_to_onnx import export_onnx, simplify_onnx  # noqa: E402
from compress.models import ModelSpec, build_model  # noqa: E402
from compress.reporting.verdict import recommend  # noqa: E402
from deploy.engines import get_engine  # noqa: E402

TARGETS = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "bf16"),
           ("openvino", "fp16"), ("openvino", "int8")]
MODELS = {"teacher": "resnet32x4", "student": "resnet8x4"}
SMOKE = {"rounds": 1, "runs": 1, "min_seconds": 0.0, "size": 8, "calibration": 8, "threads": 1, "models": ["student"]}


def qdq_onnx(model, calibration: np.ndarray, path: Path) -> None:
    from compress.quantize.nncf_quant import quantize_model, quiet_nncf, strip

    quiet_nncf()
    quantized = quantize_model(model, calibration)
    export_onnx(strip(quantized, torch.from_numpy(calibration[:2])), calibration.shape[1:], path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per round at batch 1 (a tenth at batch 32)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path)
    parser.add_argument("--models", type=lambda v: v.split(","), default=list(MODELS), help="teacher,student")
    parser.add_argument("--size", type=int, default=32, help="input height and width")
    parser.add_argument("--calibration", type=int, default=128, help="calibration inputs for int8")
    parser.add_argument("--smoke", action="store_true", help="smallest sizes, one round: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="backends-") as work:
        measure(args, (3, args.size, args.size), Path(work))


def measure(args, shape: tuple[int, int, int], work: Path) -> None:
    from compress.measuring.environment import cpu_name
    from deploy.runner.harness import cpu_features

    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_name()} ({', '.join(cpu_features())}), "
          f"{os.cpu_count()} cores, {args.threads} threads; load average {os.getloadavg()[0]:.2f}", flush=True)
    settings = LatencySettings(warmup=3, warmup_seconds=0.1, runs=args.runs, min_seconds=args.min_seconds)
    calibration = np.random.default_rng(0).standard_normal((args.calibration, *shape)).astype(np.float32)
    candidates = []  # (model, backend, precision, source, infer): every artifact is built before any timing

    for model_name in args.models:
        arch = MODELS[model_name]
        torch.manual_seed(0)
        model = build_model(ModelSpec(arch, 3, 100, shape[1])).eval()
        candidates.append((model_name, "torch", "fp32", "eager", TorchSession(model).infer))
        fp32 = work / f"{model_name}.onnx"
        export_onnx(model, shape, fp32)
        simplify_onnx(fp32)
        qdq = work / f"{model_name}.qdq.onnx"
        qdq_onnx(model, calibration, qdq)
        for backend, precision in TARGETS:
            variants = {"fp32 onnx": {"fp32": fp32}}
            if precision == "int8":
                variants = {"nncf q/dq": {"fp32": fp32, "qdq": qdq}, "engine ptq": {"fp32": fp32}}
            for source, sources in variants.items():
                out = work / f"{model_name}.{backend}.{precision}.{source.replace(' ', '_').replace('/', '')}"
                engine = get_engine(backend)
                built = engine.build(fp32, out, precision, sources=sources, calibration=calibration)
                candidates.append((model_name, backend, precision, source,
                                   engine.load(built.artifact, args.threads).infer))

    # Rounds over all artifacts, so a burst of load from other work hits every artifact alike;
    # each artifact's latency is the median of its per-round medians.
    samples: dict[tuple, list[float]] = {}
    for round_index in range(args.rounds):
        for model_name, backend, precision, source, infer in candidates:
            for batch in (1, 32):
                runs = args.runs if batch == 1 else max(3, args.runs // 10)  # a teacher batch of 32 is slow
                timing = measure_latency(infer, shape, batch, replace(settings, runs=runs))
                samples.setdefault((model_name, backend, precision, source, batch), []).append(
                    timing["latency_ms"]["p50"])
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    rows = [{"model": m, "backend": b, "precision": p, "source": s, "batch_size": n,
             "artifact": f"{m}.{b}.{p}.{s}", "latency_ms": {"p50": float(np.median(values))},
             "rounds_ms": values, "accuracy": {"top1": 1.0}, "size_mb": 0.0}
            for (m, b, p, s, n), values in samples.items()]

    # Speedups are against the first model in torch eager at batch 1: the teacher, unless only the student ran.
    reference = args.models[0]
    teacher_b1 = next(r for r in rows if r["model"] == reference and r["backend"] == "torch" and r["batch_size"] == 1)
    choice = recommend(rows, GatesConfig())
    fastest = min(r["latency_ms"]["p50"] for r in rows if r["model"] == "student" and r["batch_size"] == 1)
    print()
    print(f"| model | backend | precision | source | p50 ms b1 | p50 ms b32 | speedup vs {reference} eager b1 |")
    print("|---|---|---|---|---:|---:|---:|")
    for r in (r for r in rows if r["batch_size"] == 1):
        b32 = next(x for x in rows if x["artifact"] == r["artifact"] and x["batch_size"] == 32)
        print(f"| {r['model']} | {r['backend']} | {r['precision']} | {r['source']} | {r['latency_ms']['p50']:.3f} "
              f"| {b32['latency_ms']['p50']:.3f} | {teacher_b1['latency_ms']['p50'] / r['latency_ms']['p50']:.1f}x |")
    speedup = teacher_b1["latency_ms"]["p50"] / choice["latency_ms"]["p50"]
    print(f"\nrecommended (compress.reporting.verdict.recommend): {choice['artifact']} p50 {choice['latency_ms']['p50']:.3f} ms "
          f"at batch 1: {speedup:.1f}x faster than the {reference} in torch eager; "
          f"{choice['latency_ms']['p50'] / fastest:.3f}x the fastest student artifact")
    if args.json:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                         "rows": rows, "recommended": choice["artifact"]}, indent=2))


if __name__ == "__main__":
    main()
