"""int8 that can be trusted: accuracy-controlled PTQ, engine parity, int8 ONNX size, `targets: auto`.

Five pipelines on digits, each a real `compress run` in a temporary folder. Pipelines that differ only
after a stage share one run dir, so the runner's stage cache trains their teacher and student once
(its key is the stage's config and what it reads): each result is read before the next run replaces it.

1. plain PTQ and accuracy-controlled PTQ (budget 0.5 points) of a student whose plain PTQ loses more
   than a point (tests/quant_models.py OutlierCNN: an outlier-heavy first block), with the ONNX Runtime
   and OpenVINO int8 latency of both;
2. examples/digits/quantized.yaml with `targets: auto`: every int8 engine's agreement with its
   fake-quantized model, and whether the recommendation is the fastest row within the accuracy budget;
3. a resnet8x4 student (PTQ, `targets: auto`): the int8 ONNX's size against the fp32 ONNX, the same
   recommendation check, and which precisions the table has.

    python benchmarks/int8_trust.py [--work DIR]     # a temporary folder unless --work names one to keep
    python benchmarks/int8_trust.py --smoke          # 1 epoch each, one short benchmark round: checks that it runs
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress.cli import main as compress  # noqa: E402
from compress.config import GatesConfig  # noqa: E402
from compress.core.fileio import read_json  # noqa: E402
from compress.reporting.verdict import artifact_id, candidates  # noqa: E402

BUDGET = 0.005
BENCHMARK = {"batch_sizes": [1, 32], "rounds": 3, "memory": False}
SMOKE_BENCHMARK = {"batch_sizes": [1], "rounds": 1, "runs": 1, "warmup": 0, "warmup_seconds": 0, "min_seconds": 0,
                   "memory": False}


def outlier_pipeline(budget: float | None, float_precision: str = "fp32") -> dict:
    return {
        "name": "outlier", "seed": 0, "data": {"source": "digits", "val_fraction": 0.25},
        "teacher": {"model": "cnn", "kwargs": {"channels": [32, 64, 128]},
                    "train": {"epochs": 8, "batch_size": 64, "lr": 0.003}},
        "student": {"model": "tests.quant_models:OutlierCNN", "kwargs": {"channels": [16, 32], "extra_convs": 3}},
        "stages": {
            "distill": {"epochs": 15, "batch_size": 64, "lr": 0.005, "temperature": 4.0, "alpha": 0.7},
            "quantize": {"mode": "ptq", **({"max_accuracy_drop": budget} if budget else {})},
            "export": {}, "build": {"targets": ["onnxruntime:int8", "openvino:int8"],
                                    "int8_float_precision": float_precision},
            "benchmark": BENCHMARK, "report": {},
        },
    }


def digits_auto() -> dict:
    config = yaml.safe_load((ROOT / "examples/digits/quantized.yaml").read_text())
    config["stages"]["build"] = {"targets": "auto"}
    config["stages"]["benchmark"] = BENCHMARK
    return config


def resnet_auto() -> dict:
    config = digits_auto()
    config["name"] = "resnet8x4"
    config["student"] = {"model": "resnet8x4"}
    config["stages"]["quantize"] = {"mode": "ptq"}
    return config


def smallest(config: dict) -> dict:
    """The same pipeline at one epoch per training stage and one short benchmark round (--smoke)."""
    config["teacher"]["train"]["epochs"] = 1
    config["stages"]["distill"]["epochs"] = 1
    if config["stages"]["quantize"].get("mode") == "qat":
        config["stages"]["quantize"]["epochs"] = 1
    config["stages"]["benchmark"] = SMOKE_BENCHMARK
    config["gates"] = {"max_accuracy_drop": 0.999}  # 1-epoch students: every row is within the budget the checks use
    return config


def run(config: dict, work: Path, smoke: bool = False) -> Path:
    config = smallest(config) if smoke else config
    work.mkdir(parents=True, exist_ok=True)
    path = work / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    code = compress(["--quiet", "run", str(path), "--run-dir", str(work / "run")])
    if code not in (0, 3):  # 3: a gate failed, the numbers are still the point
        raise SystemExit(f"{path}: compress run exited {code}")
    return work / "run"


def outputs(run_dir: Path, stage: str) -> dict:
    return read_json(run_dir / "run.json")["stages"][stage]["outputs"]


def student_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_json(run_dir / "stages/benchmark/results.json")["rows"] if r["model"] == "student"]


def p50(rows: list[dict], backend: str, precision: str, batch: int) -> float:
    return next(r["latency_ms"]["p50"] for r in rows
                if (r["backend"], r["precision"], r["batch_size"]) == (backend, precision, batch))


def recommendation_check(run_dir: Path) -> str:
    """The report's recommendation against the fastest row within the accuracy budget, found here from the rows."""
    results = read_json(run_dir / "stages/benchmark/results.json")
    gates = GatesConfig.model_validate(yaml.safe_load((run_dir / "pipeline.yaml").read_text()).get("gates") or {})
    rows = results["rows"]
    teacher = next(r for r in rows if r["model"] == "teacher")
    first = min(r["batch_size"] for r in rows)
    within = [r for r in rows if r["model"] == "student" and r["batch_size"] == first
              and teacher["accuracy"]["top1"] - r["accuracy"]["top1"] <= (gates.max_accuracy_drop or 1.0)]
    fastest = min(within, key=lambda r: r["latency_ms"]["p50"])
    chosen = min(candidates(rows, gates), key=lambda r: r["latency_ms"]["p50"])
    report = read_json(run_dir / "report.json")["headline"]["recommended"]
    precisions = sorted({f"{r['backend']}:{r['precision']}" for r in rows if r["model"] == "student"})
    return (f"rows: {', '.join(precisions)}\n"
            f"fastest within the budget at b{first}: {artifact_id(fastest)} ({fastest['latency_ms']['p50']:.3f} ms); "
            f"report recommends {report}; candidates' fastest {artifact_id(chosen)}; "
            f"same: {'yes' if report == artifact_id(fastest) else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of the training stages")
    parser.add_argument("--smoke", action="store_true", help="smallest sizes, one round: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.threads = 1
    torch.set_num_threads(args.threads)
    if args.work is not None:
        measure_all(args.work, args.smoke)
        return
    with tempfile.TemporaryDirectory(prefix="int8_trust_") as work:
        measure_all(Path(work), args.smoke)


def measure_all(work: Path, smoke: bool) -> None:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    print(f"machine: {model}, {platform.python_version()}, work dir {work}")

    runs: dict[str, list[dict]] = {}
    for name, budget, float_precision in (("plain PTQ", None, "fp32"), ("controlled", BUDGET, "fp32"),
                                          ("controlled, float layers bf16", BUDGET, "bf16")):
        run_dir = run(outlier_pipeline(budget, float_precision), work / "outlier", smoke)
        runs[name] = student_rows(run_dir)
        if name == "controlled":
            control = outputs(run_dir, "quantize")["accuracy_control"]
    print("\n## 1. accuracy-controlled PTQ (OutlierCNN, budget "
          f"{BUDGET * 100:.1f} pts, {control['layers']} quantizable layers)")
    print(f"float {control['float_top1']:.4f}  plain PTQ {control['plain_ptq_top1']:.4f} "
          f"(drop {(control['float_top1'] - control['plain_ptq_top1']) * 100:.2f} pts)  controlled {control['top1']:.4f} "
          f"(drop {control['drop'] * 100:.2f} pts, met: {control['met']})")
    print(f"float layers: {control['float_layers']}; int8 layers {control['int8_layers']}/{control['layers']} "
          f"= {control['int8_layers'] / control['layers']:.0%}")
    print("sensitivity: " + ", ".join(f"{s['layer']} {s['error_removed']:.1%}" for s in control["sensitivity"]))
    print("| int8 engine | batch | " + " | ".join(f"{name} p50 ms" for name in runs) + " | "
          + " | ".join(f"{name} top-1" for name in runs) + " |")
    print("|---|---:|" + "---:|" * 2 * len(runs))
    for backend in ("onnxruntime", "openvino"):
        for batch in sorted({r["batch_size"] for r in runs["plain PTQ"]}):
            if backend == "onnxruntime":  # int8_float_precision applies to OpenVINO only
                cells = {name: rows for name, rows in runs.items() if "bf16" not in name}
            else:
                cells = runs
            times = [f"{p50(rows, backend, 'int8', batch):.3f}" if name in cells else "-" for name, rows in runs.items()]
            tops = [f"{next(r['accuracy']['top1'] for r in rows if r['backend'] == backend):.4f}" if name in cells
                    else "-" for name, rows in runs.items()]
            print(f"| {backend} | {batch} | " + " | ".join(times) + " | " + " | ".join(tops) + " |")

    digits = run(digits_auto(), work / "digits", smoke)
    print("\n## 2. examples/digits/quantized.yaml with targets: auto: engine parity")
    for engine in outputs(digits, "build")["engines"]:
        parity = engine["parity"]
        print(f"{engine['backend']}:{engine['precision']}: agreement {parity['top1_agreement']:.4f} with "
              f"{parity['reference']} on {parity['samples']} val inputs (needs {parity['min_agreement']})")
    print(recommendation_check(digits))

    resnet = run(resnet_auto(), work / "digits", smoke)  # the same teacher as digits
    export = outputs(resnet, "export")
    fp32_mb, int8_mb = ((resnet / export[key]).stat().st_size / 1e6 for key in ("onnx", "onnx_qdq"))
    print(f"\n## 3. resnet8x4 student: int8 ONNX {int8_mb:.2f} MB / fp32 ONNX {fp32_mb:.2f} MB = {int8_mb / fp32_mb:.3f}x")
    print(recommendation_check(resnet))


if __name__ == "__main__":
    main()
