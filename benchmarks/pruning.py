"""A student pruned from the teacher vs a hand-designed one, and whether pruned MACs turn into time.

1. digits, per seed: the examples/digits teacher (cnn [32, 64, 128]) pruned to <= 25% of its MACs
   (Taylor, 3 rounds with 2 KD epochs between them, then `distill`), against the zoo cnn of the
   nearest MACs trained by `distill` from the same teacher for the same KD epochs in all (the
   rounds' epochs included). Both are whole pipelines run by compress.runner (teacher trained once
   per seed, then given to the second pipeline as its checkpoint).
2. resnet32x4 at 3x32x32 (random weights: latency does not depend on them) pruned to a few MACs
   ratios, exported to ONNX and timed in ONNX Runtime and OpenVINO fp32 at batch 1, interleaved
   rounds: the latency ratio beside the MACs ratio.

    python benchmarks/pruning.py [--seeds 3] [--epochs 15] [--rounds 3]
    python benchmarks/pruning.py --smoke    # 1 seed, 1 epoch, 1 round; resnet8x4, one ratio, 8x8: checks that it runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.core.fileio import read_json  # noqa: E402
from compress.exporting.torch_to_onnx import export_onnx, simplify_onnx  # noqa: E402
from compress.models import ModelSpec, build_model, count_macs, count_params  # noqa: E402
from compress.models.pruning import Budget, classifier_heads, prune_to  # noqa: E402
from compress.runner import Runner, parse_pipeline  # noqa: E402
from deploy.engines import get_engine  # noqa: E402
from deploy.runner.harness import LatencySettings, measure_latency  # noqa: E402

TEACHER = {"model": "cnn", "kwargs": {"channels": [32, 64, 128]}}
HAND_WIDTHS = range(8, 21, 2)  # zoo cnn [c, 2c, 4c]: the hand-designed candidates
SMOKE = {"seeds": 1, "epochs": 1, "teacher_epochs": 1, "rounds": 1, "runs": 1, "latency_rounds": 1, "threads": 1,
         "latency_model": "resnet8x4", "size": 8, "ratios": [0.5]}
QUICK_STAGES = {"export": {}, "build": {"targets": ["onnxruntime:fp32"]},
                "benchmark": {"batch_sizes": [1], "warmup": 1, "runs": 3, "min_seconds": 0.0, "memory": False,
                              "rounds": 1}, "report": {}}


def quiet(_: str) -> None:
    pass


def pipeline(seed: int, teacher: dict, student: dict | None, stages: dict) -> dict:
    raw = {"name": f"pruning-bench-{seed}", "seed": seed, "data": {"source": "digits", "val_fraction": 0.2},
           "teacher": teacher, "stages": {**stages, **QUICK_STAGES}}
    return {**raw, "student": student} if student else raw


def run(raw: dict, run_dir: Path) -> dict:
    Runner(parse_pipeline(raw, "pipeline.yaml", run_dir.parent), run_dir, log=quiet).run()
    return {name: entry["outputs"] for name, entry in read_json(run_dir / "run.json")["stages"].items()}


def distill_options(epochs: int) -> dict:
    return {"epochs": epochs, "batch_size": 64, "optimizer": "adamw", "lr": 0.005, "temperature": 4.0, "alpha": 0.7,
            "progress": False}


def nearest_hand_student(macs: int) -> dict:
    """The zoo cnn [c, 2c, 4c] whose MACs on digits are nearest `macs`."""
    def cost(width: int) -> int:
        return count_macs(build_model(ModelSpec("cnn", 1, 10, 8, {"channels": [width, 2 * width, 4 * width]})), (1, 8, 8))

    width = min(HAND_WIDTHS, key=lambda w: abs(cost(w) - macs))
    return {"model": "cnn", "kwargs": {"channels": [width, 2 * width, 4 * width]}, "macs": cost(width)}


def digits_seed(seed: int, args, tmp: Path) -> dict:
    teacher = {**TEACHER, "train": {"epochs": args.teacher_epochs, "batch_size": 64, "optimizer": "adamw", "lr": 0.003,
                                    "weight_decay": 0.0001, "progress": False}}
    prune = {"target_macs": 0.25, "method": "taylor", "rounds": args.rounds, "epochs_per_round": 2,
             "batch_size": 64, "lr": 0.003, "progress": False}
    pruned = run(pipeline(seed, teacher, None, {"prune": prune, "distill": distill_options(args.epochs)}),
                 tmp / f"pruned{seed}")
    kd_epochs = args.epochs + 2 * (args.rounds - 1)
    hand = nearest_hand_student(pruned["prune"]["student"]["macs"])
    given = {**TEACHER, "checkpoint": str(tmp / f"pruned{seed}" / pruned["teacher"]["checkpoint"])}
    designed = run(pipeline(seed, given, {k: hand[k] for k in ("model", "kwargs")},
                            {"distill": distill_options(kd_epochs)}), tmp / f"hand{seed}")
    return {"teacher": pruned["teacher"]["val_top1"], "pruned before KD": pruned["prune"]["val_top1"],
            "pruned + KD": pruned["distill"]["val_top1"], "hand-designed + KD": designed["distill"]["val_top1"],
            "macs": pruned["prune"]["student"]["macs"], "teacher_macs": pruned["prune"]["teacher"]["macs"],
            "hand": hand, "kd_epochs": kd_epochs}


def digits_part(args, tmp: Path) -> None:
    started = time.perf_counter()
    seeds = []
    for seed in range(args.seeds):
        seeds.append(digits_seed(seed, args, tmp))
        print(f"digits seed {seed} done ({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
    first = seeds[0]
    print(f"\n## digits: teacher cnn {TEACHER['kwargs']['channels']} ({first['teacher_macs']:,} MACs), {args.seeds} "
          f"seeds, val top-1 % (360 samples)\n")
    print("| model | MACs (share of teacher) | " + " | ".join(f"seed {i}" for i in range(args.seeds)) + " | mean |")
    print("|---|---:|" + "---:|" * (args.seeds + 1))
    for row in ("teacher", "pruned before KD", "pruned + KD", "hand-designed + KD"):
        macs = first["teacher_macs"] if row == "teacher" else first["hand"]["macs"] if row.startswith("hand") \
            else first["macs"]
        values = [100 * s[row] for s in seeds]
        print(f"| {row} | {macs:,} ({macs / first['teacher_macs']:.1%}) | " + " | ".join(f"{v:.2f}" for v in values)
              + f" | {statistics.mean(values):.2f} |")
    hands = sorted({str(s["hand"]["kwargs"]["channels"]) for s in seeds})
    print(f"\npruned: Taylor, {args.rounds} rounds, 2 KD epochs between rounds, then distill {args.epochs} epochs; "
          f"hand-designed: cnn {', '.join(hands)} (nearest MACs), distill {first['kd_epochs']} epochs (the same KD "
          "epochs in all); distill lr 0.005, T 4, alpha 0.7 for both.")
    gap = statistics.mean(100 * (s["teacher"] - s["pruned + KD"]) for s in seeds)
    edge = statistics.mean(100 * (s["pruned + KD"] - s["hand-designed + KD"]) for s in seeds)
    print(f"mean gap pruned+KD to teacher: {gap:.2f} pts (target <= 1.5); pruned+KD minus hand-designed+KD: "
          f"{edge:+.2f} pts (target >= 0)")


def latency_part(args, tmp: Path) -> None:
    shape = (3, args.size, args.size)
    torch.manual_seed(0)
    teacher = build_model(ModelSpec(args.latency_model, 3, 100, args.size)).eval()
    example = torch.randn(1, *shape)
    reference = count_macs(teacher, shape)
    models = {"teacher": teacher}
    for ratio in args.ratios:
        models[f"{ratio:g}"] = prune_to(teacher, example, "magnitude", Budget("macs", ratio), reference,
                                        classifier_heads(teacher, example))[0]
    sessions = []
    for name, model in models.items():
        onnx = tmp / f"{args.latency_model}.{name}.onnx"
        export_onnx(model, shape, onnx)
        simplify_onnx(onnx)
        for backend in ("onnxruntime", "openvino"):
            engine = get_engine(backend)
            built = engine.build(onnx, tmp / f"{name}.{backend}", "fp32")
            sessions.append((name, backend, engine.load(built.artifact, args.threads).infer))
    settings = LatencySettings(warmup=3, warmup_seconds=0.1, runs=args.runs, min_seconds=0.2)
    p50s: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.latency_rounds):  # interleaved: a burst of load from other work hits every artifact alike
        for name, backend, infer in sessions:
            p50s.setdefault((name, backend), []).append(measure_latency(infer, shape, 1, settings)["latency_ms"]["p50"])
    p50 = {key: float(np.median(values)) for key, values in p50s.items()}
    print(f"\n## {args.latency_model}, 3x{args.size}x{args.size}, batch 1, fp32, magnitude pruning; median of {args.latency_rounds} interleaved "
          f"rounds' p50\n")
    print("| model | MACs | MACs ratio | params ratio | ORT p50 ms | ORT latency ratio | OpenVINO p50 ms | "
          "OpenVINO latency ratio |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, model in models.items():
        macs = count_macs(model, shape)
        cells = [f"{p50[(name, b)]:.3f} | {p50[(name, b)] / p50[('teacher', b)]:.2f}" for b in ("onnxruntime", "openvino")]
        print(f"| {'teacher' if name == 'teacher' else f'pruned to {name}'} | {macs / 1e6:.1f}M | {macs / reference:.3f} "
              f"| {count_params(model) / count_params(teacher):.3f} | {cells[0]} | {cells[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15, help="distill epochs of the pruned student")
    parser.add_argument("--rounds", type=int, default=3, help="pruning rounds")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per latency round")
    parser.add_argument("--latency-rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--latency-model", default="resnet32x4", help="the zoo model the latency part prunes")
    parser.add_argument("--size", type=int, default=32, help="input height and width of the latency part")
    parser.add_argument("--ratios", type=lambda v: [float(r) for r in v.split(",")], default=[0.5, 0.25, 0.125],
                        help="MACs ratios of the latency part")
    parser.add_argument("--smoke", action="store_true", help="smallest sizes, one round: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    torch.set_num_threads(args.threads)
    from compress.measuring.environment import cpu_name

    started = time.perf_counter()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_name()}, {os.cpu_count()} cores, "
          f"{args.threads} threads; load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="pruning-bench-") as tmp:
        if not args.skip_digits:
            digits_part(args, Path(tmp))
        latency_part(args, Path(tmp))
    print(f"\n({time.perf_counter() - started:.0f}s)")


if __name__ == "__main__":
    main()
