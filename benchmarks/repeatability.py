"""Two back-to-back benchmarks of the same artifact: do their p50 agree within their reported spread?

Each artifact is benchmarked twice in a row, A then B, and the pair agrees when
|p50 A - p50 B| <= max(± A, ± B), where ± (`latency_ms.p50_spread`) is what every benchmark
reports with its p50: how far a rerun's p50 may land, 95%, from its rounds (see
`deploy.runner.harness.repeat_spread`). Two kinds of benchmark are checked:

- `compress benchmark FILE` (the ad-hoc command): a resnet8x4 student (3x32x32 input, random
  weights: latency does not depend on them) as a torch checkpoint and as ONNX, at each thread count;
- the pipeline's benchmark stage: `compress run PIPELINE --force benchmark`, twice, each in a new
  process, every row of results.json (teacher, student, engines, each batch size).

    python benchmarks/repeatability.py                                  # both, about 8 minutes on 2 cores
    python benchmarks/repeatability.py --skip-files --pipelines 3       # the stage only, 3 pairs
    python benchmarks/repeatability.py --model runs/digits/stages/export/student.onnx --skip-pipeline
    python benchmarks/repeatability.py --smoke    # one pair of each, batch 1, a 1-epoch digits pipeline: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress.measuring.adhoc import benchmark_file, parse_ints  # noqa: E402
from deploy.runner.harness import LatencySettings, within_noise  # noqa: E402

SMOKE = {"batch": "1", "threads": "1", "runs": 5, "min_seconds": 0.0, "rounds": 2, "pipelines": 1}
HEADER = ("| benchmark | artifact | threads | batch | A p50 ms | A ± | B p50 ms | B ± | Δ p50 | Δ / ± | agree |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def default_artifacts(folder: Path) -> list[Path]:
    import torch

    from compress.exporting.torch_to_onnx import export_onnx
    from compress.models import ModelSpec, build_model, save_checkpoint

    torch.manual_seed(0)
    spec = ModelSpec("resnet8x4", 3, 100, 32, {})
    model = build_model(spec).eval()
    save_checkpoint(folder / "resnet8x4.pt", model, spec)
    export_onnx(model, (3, 32, 32), folder / "resnet8x4.onnx")
    return [folder / "resnet8x4.pt", folder / "resnet8x4.onnx"]


def pair_line(kind: str, artifact: str, threads: int, a: dict, b: dict) -> tuple[str, bool]:
    la, lb = a["latency_ms"], b["latency_ms"]
    delta, spread = abs(la["p50"] - lb["p50"]), max(la["p50_spread"], lb["p50_spread"])
    agree = bool(within_noise(la, lb))
    ratio = f"{delta / spread:.2f}" if spread else "-"
    return (f"| {kind} | {artifact} | {threads} | {a['batch_size']} | {la['p50']:.3f} | {la['p50_spread']:.3f} "
            f"| {lb['p50']:.3f} | {lb['p50_spread']:.3f} | {delta:.3f} | {ratio} "
            f"| {'yes' if agree else 'NO'} |"), agree


def file_pairs(models: list[Path], batches: list[int], thread_counts: list[int], settings: LatencySettings,
               rounds: int) -> list[bool]:
    verdicts = []
    for model in models:
        for threads in thread_counts:
            first, second = (benchmark_file(model, None, batches, None, threads, settings, rounds)["rows"]
                             for _ in "AB")
            for a, b in zip(first, second):
                line, agree = pair_line("compress benchmark", f"{model.name} ({a['backend']})", threads, a, b)
                print(line, flush=True)
                verdicts.append(agree)
    return verdicts


def smoke_pipeline(folder: Path) -> Path:
    """examples/digits/pipeline.yaml at the smallest budget: 1 epoch each, no baseline, one engine, batch 1, 2 short
    rounds."""
    import yaml

    config = yaml.safe_load((ROOT / "examples" / "digits" / "pipeline.yaml").read_text())
    config["teacher"]["train"].update(epochs=1, progress=False)
    config["stages"].pop("baseline", None)
    config.pop("gates", None)  # a 1-epoch student misses the accuracy gate; the timings are the point
    config["stages"]["distill"].update(epochs=1, progress=False)
    config["stages"]["build"]["targets"] = ["onnxruntime:fp32"]
    config["stages"]["benchmark"] = {"batch_sizes": [1], "rounds": 2, "warmup": 1, "warmup_seconds": 0, "runs": 5,
                                     "min_seconds": 0, "memory": False}
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def stage_results(pipeline: Path, run_dir: Path, force: bool) -> list[dict]:
    argv = [sys.executable, "-m", "compress", "--quiet", "run", str(pipeline), "--run-dir", str(run_dir)]
    code = subprocess.run(argv + (["--force", "benchmark"] if force else []), cwd=ROOT).returncode
    if code not in (0, 3):  # 3: a gate failed (a 1-epoch student may miss the accuracy gate); the timings stand
        raise SystemExit(f"{pipeline}: compress run exited {code}")
    return json.loads((run_dir / "stages" / "benchmark" / "results.json").read_text())["rows"]


def pipeline_pairs(pipeline: Path, repeats: int, folder: Path) -> list[bool]:
    run_dir = folder / "run"
    stage_results(pipeline, run_dir, force=False)  # trains and builds once; its benchmark is not compared
    verdicts = []
    for _ in range(repeats):
        first, second = (stage_results(pipeline, run_dir, force=True) for _ in "AB")
        for a, b in zip(first, second):
            line, agree = pair_line("benchmark stage", f"{a['model']}.{a['backend']}.{a['precision']}",
                                    a["threads"], a, b)
            print(line, flush=True)
            verdicts.append(agree)
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="artifact to measure (repeatable); default: resnet8x4")
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--threads", default=str(os.cpu_count() or 1), help="comma-separated thread counts")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per round, at least")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="seconds per round, at least")
    parser.add_argument("--rounds", type=int, default=3, help="fresh loads per benchmark")
    parser.add_argument("--pipeline", default=str(ROOT / "examples" / "digits" / "pipeline.yaml"))
    parser.add_argument("--pipelines", type=int, default=2, help="back-to-back pairs of the benchmark stage")
    parser.add_argument("--skip-files", action="store_true", help="only the benchmark stage")
    parser.add_argument("--skip-pipeline", action="store_true", help="only `compress benchmark FILE`")
    parser.add_argument("--smoke", action="store_true", help="smallest sizes, one pair: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    settings = LatencySettings(warmup=10, warmup_seconds=1.0, runs=args.runs, min_seconds=args.min_seconds)
    started = time.time()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}; "
          f"agreement: |p50 A - p50 B| <= max(± A, ± B)\n")
    print(HEADER)
    verdicts: dict[str, list[bool]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_files:
            models = [Path(m) for m in args.model] if args.model else default_artifacts(Path(tmp))
            verdicts["compress benchmark FILE"] = file_pairs(
                models, parse_ints(args.batch, "--batch"), parse_ints(args.threads, "--threads"), settings,
                args.rounds)
        if not args.skip_pipeline:
            pipeline = smoke_pipeline(Path(tmp)) if args.smoke else Path(args.pipeline).resolve()
            verdicts["benchmark stage"] = pipeline_pairs(pipeline, args.pipelines, Path(tmp))
    print()
    for kind, agreed in verdicts.items():
        print(f"- {kind}: {sum(agreed)}/{len(agreed)} pairs agree within their reported ±")
    print(f"- took {time.time() - started:.0f} s; load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
