"""Training cost of the distill stage's loop against a minimal hand-written KD loop, and the teacher cache.

1. Overhead: wall time per epoch of `fit` + `Objective` (what the distill stage runs: checkpoint
   every epoch, best.pt, metrics.jsonl, TensorBoard, loss parts, validation) against a minimal loop
   (shuffle, student forward, teacher forward under no_grad, Hinton KD + CE, step, validation) on
   the same models, data and batches. Measured with the teacher running per batch in both, then
   with teacher logits precomputed in both. Ratio of medians over interleaved repeats.
2. Teacher cache: epoch time of the distill objective with the cache against without, for a teacher
   with >= 5x the student's MACs (cache build time amortised over the epochs).

    python benchmarks/train_overhead.py      # about 2-3 minutes on 2 cores
    python benchmarks/train_overhead.py --smoke   # 1 epoch, 1 repeat: checks that the script runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.config import DataConfig, TrainConfig  # noqa: E402
from compress.data import load_dataset  # noqa: E402
from compress.distill.losses import kl_at_temperature  # noqa: E402
from compress.distill.objective import Objective, default_losses  # noqa: E402
from compress.distill.train import accuracy, fit  # noqa: E402
from compress.models import ModelSpec, build_model, count_macs  # noqa: E402

STUDENT = ModelSpec("cnn", 1, 10, 8, {"channels": [8, 16, 32]})
SMOKE = {"epochs": 1, "repeats": 1}
TEACHERS = {"cnn[32,64,128]": ModelSpec("cnn", 1, 10, 8, {"channels": [32, 64, 128]}),
            "resnet8x4": ModelSpec("resnet8x4", 1, 10, 8, {})}


def new(spec: ModelSpec, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(spec)


def cfg(epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=64, lr=0.005, progress=False)


def stage_loop(data, teacher, epochs: int, cache: bool) -> float:
    """Seconds per epoch of the distill stage's training (objective built inside the timing)."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        student = new(STUDENT)
        objective = Objective(default_losses(4.0, 0.9), student, teacher, data.train, cfg(epochs), 4.0,
                              use_cache=cache, log=lambda _: None, cache_dir=Path(tmp) / "teacher_cache")
        fit(student, data.train, data.val, cfg(epochs), Path(tmp), 0,
            loss_fn=objective, log=lambda _: None, extra_modules=objective.modules)
        objective.close()
        return (time.perf_counter() - started) / epochs


def minimal_loop(data, teacher, epochs: int, precomputed: bool) -> float:
    """The shortest honest KD loop: what someone would write by hand."""
    started = time.perf_counter()
    student = new(STUDENT)
    x, y = torch.as_tensor(data.train.x), torch.as_tensor(data.train.labels)
    teacher.eval()
    if precomputed:
        with torch.no_grad():
            all_teacher_logits = teacher(x)
    optimizer = torch.optim.AdamW(student.parameters(), lr=0.005)
    steps = -(-len(x) // 64)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        student.train()
        order = torch.randperm(len(x), generator=generator)
        for step in range(steps):
            idx = order[step * 64:(step + 1) * 64]
            if precomputed:
                teacher_logits = all_teacher_logits[idx]
            else:
                with torch.no_grad():
                    teacher_logits = teacher(x[idx])
            logits = student(x[idx])
            loss = 0.9 * kl_at_temperature(logits, teacher_logits, 4.0) + 0.1 * F.cross_entropy(logits, y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        accuracy(student, data.val)
    return (time.perf_counter() - started) / epochs


def median_pair(first, second, repeats: int) -> tuple[float, float]:
    a, b = [], []
    for _ in range(repeats):  # interleaved, so drifting load hits both alike
        a.append(first())
        b.append(second())
    return statistics.median(a), statistics.median(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="smallest sizes, one repeat: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    torch.set_num_threads(args.threads)
    data = load_dataset(DataConfig(source="digits"), 0)
    shape = data.input_shape
    student_macs = count_macs(new(STUDENT), shape)
    print(f"digits train split {len(data.train)} inputs, batch 64, {args.epochs} epochs per measurement, "
          f"{args.repeats} interleaved repeats, {args.threads} thread(s); student cnn[8,16,32] {student_macs:,} MACs\n")

    teacher = new(TEACHERS["cnn[32,64,128]"], 1)
    print("| comparison (teacher cnn[32,64,128]) | distill stage s/epoch | minimal loop s/epoch | ratio |\n|---|---:|---:|---:|")
    for label, cache in (("teacher run per batch in both", False), ("teacher logits precomputed in both", True)):
        stage, minimal = median_pair(lambda: stage_loop(data, teacher, args.epochs, cache),
                                     lambda: minimal_loop(data, teacher, args.epochs, cache), args.repeats)
        print(f"| {label} | {stage:.3f} | {minimal:.3f} | {stage / minimal:.2f}x |")

    print("\n| teacher | teacher MACs / student MACs | no cache s/epoch | cache s/epoch | speedup |\n|---|---:|---:|---:|---:|")
    for name, spec in TEACHERS.items():
        teacher = new(spec, 1)
        ratio = count_macs(teacher, shape) / student_macs
        off, on = median_pair(lambda: stage_loop(data, teacher, args.epochs, False),
                              lambda: stage_loop(data, teacher, args.epochs, True), max(1, args.repeats // 2))
        print(f"| {name} | {ratio:.1f}x | {off:.3f} | {on:.3f} | {off / on:.2f}x |")


if __name__ == "__main__":
    main()
