"""Two back-to-back benchmarks of the same artifact: do their medians agree within their reported spread?

Measures each artifact twice in a row with the harness every backend shares (`compress benchmark`'s
code path) and calls the pair in agreement when |p50_A - p50_B| <= max(spread_A, spread_B), where a
benchmark's reported spread is the larger of its within-run std and, with `--rounds N` (default
3: the artifact is loaded afresh N times per benchmark), the range of its rounds' p50. The table
also shows the verdict against the within-run std alone. By default the artifact is a resnet8x4 student (3x32x32 input, random weights:
latency does not depend on them) as a torch checkpoint and as ONNX; `--model FILE` measures yours.

    python benchmarks/repeatability.py                       # resnet8x4, torch + onnxruntime, batch 1 and 32
    python benchmarks/repeatability.py --model runs/digits/stages/export/student.onnx --batch 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.adhoc_bench import benchmark_file, parse_ints  # noqa: E402
from compress.bench import LatencySettings  # noqa: E402


def default_artifacts(folder: Path) -> list[Path]:
    import torch

    from compress.export import export_onnx
    from compress.models import ModelSpec, build_model, save_checkpoint

    torch.manual_seed(0)
    spec = ModelSpec("resnet8x4", 3, 100, 32, {})
    model = build_model(spec).eval()
    save_checkpoint(folder / "resnet8x4.pt", model, spec)
    export_onnx(model, (3, 32, 32), folder / "resnet8x4.onnx")
    return [folder / "resnet8x4.pt", folder / "resnet8x4.onnx"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="artifact to measure (repeatable); default: resnet8x4")
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--threads", default=str(os.cpu_count() or 1), help="comma-separated thread counts")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3, help="fresh loads per benchmark (1: within-run std only)")
    args = parser.parse_args()
    settings = LatencySettings(warmup=10, warmup_seconds=1.0, runs=args.runs, min_seconds=args.min_seconds)
    batches = parse_ints(args.batch, "--batch")
    with tempfile.TemporaryDirectory() as tmp:
        models = [Path(m) for m in args.model] if args.model else default_artifacts(Path(tmp))
        print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; runs >= {settings.runs} and >= "
              f"{settings.min_seconds} s per measurement, {args.rounds} fresh load(s) per benchmark; agreement: "
              f"|p50 A - p50 B| <= max(spread A, spread B), spread = max(std, p50 range of the rounds)\n")
        print("| artifact | backend | threads | batch | A p50 ms | A std | A rounds range | B p50 ms | B std "
              "| B rounds range | Δ p50 | Δ/spread | within std | agree |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
        agreed = agreed_std = total = 0
        for model in models:
            for threads in parse_ints(args.threads, "--threads"):
                first, second = (benchmark_file(model, None, batches, None, threads, settings, args.rounds)["rows"]
                                 for _ in "AB")
                for a, b in zip(first, second):
                    la, lb = a["latency_ms"], b["latency_ms"]
                    range_a, range_b = la.get("round_spread", 0.0), lb.get("round_spread", 0.0)
                    delta = abs(la["p50"] - lb["p50"])
                    spread = max(la["std"], lb["std"], range_a, range_b)
                    agree, agree_std = delta <= spread, delta <= max(la["std"], lb["std"])
                    agreed, agreed_std, total = agreed + agree, agreed_std + agree_std, total + 1
                    print(f"| {model.name} | {a['backend']} | {threads} | {a['batch_size']} | {la['p50']:.3f} "
                          f"| {la['std']:.3f} | {range_a:.3f} | {lb['p50']:.3f} | {lb['std']:.3f} | {range_b:.3f} "
                          f"| {delta:.3f} | {delta / spread if spread else float('inf'):.2f} "
                          f"| {'yes' if agree_std else 'NO'} | {'yes' if agree else 'NO'} |", flush=True)
        print(f"\n{agreed}/{total} pairs agree within their reported spread "
              f"({agreed_std}/{total} within the within-run std alone)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
