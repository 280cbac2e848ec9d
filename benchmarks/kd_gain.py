"""KD gain on digits: teacher, student alone, and the student with each logit loss, over seeds.

Two settings: all labels; labels kept on 10% of the train split with the other 90% as an
unlabelled transfer set. The teacher is trained on all train labels in both settings (it stands
for a checkpoint you already have); the student alone sees only the labels of its setting.
Each KD row is `0.9 * LOSS + 0.1 * CE` (LOSS at the stage's default options; `kd` is the stage's
default objective). Same student, seed, budget and training options in every row.

    python benchmarks/kd_gain.py            # about 2-4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.config import DataConfig, TrainConfig, TransferConfig  # noqa: E402
from compress.data import load_dataset  # noqa: E402
from compress.distill.objective import LossSpec, Objective  # noqa: E402
from compress.distill.train import NO_LABEL, fit  # noqa: E402
from compress.models import ModelSpec, build_model  # noqa: E402

LOGIT_LOSSES = ["kd", "dkd", "lskd", "dist", "mse"]
TEACHER = ModelSpec("cnn", 1, 10, 8, {"channels": [32, 64, 128]})
STUDENT = ModelSpec("cnn", 1, 10, 8, {"channels": [8, 16, 32]})


def quiet(_: str) -> None:
    pass


def new(spec: ModelSpec, seed: int):
    torch.manual_seed(seed)
    return build_model(spec)


def train_teacher(data, seed: int, work: Path):
    model = new(TEACHER, seed)
    cfg = TrainConfig(epochs=8, batch_size=64, lr=0.003, weight_decay=1e-4, progress=False)
    return model, fit(model, data.x_train, data.y_train, data.x_val, data.y_val, cfg, work, seed, log=quiet).best_accuracy


def student_cfg(epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=64, lr=0.005, progress=False)


def train_student(data, x, y, seed, work, epochs, teacher=None, loss=None) -> float:
    student = new(STUDENT, seed)
    objective = None
    if loss is not None:
        specs = [LossSpec(name=loss, weight=0.9), LossSpec(name="ce", weight=0.1)]
        objective = Objective(specs, student, teacher, x, student_cfg(epochs), 4.0, log=quiet)
    result = fit(student, x, y, data.x_val, data.y_val, student_cfg(epochs), work, seed, loss_fn=objective,
                 log=quiet, extra_modules=objective.modules if objective else None)
    return result.best_accuracy


def run_seed(seed: int, epochs: int, tmp: Path) -> dict[str, dict[str, float]]:
    full = load_dataset(DataConfig(source="digits"), seed)
    part = load_dataset(DataConfig(source="digits", transfer=TransferConfig(labeled_fraction=0.1)), seed)
    teacher, teacher_acc = train_teacher(full, seed, tmp / f"teacher{seed}")
    rows: dict[str, dict[str, float]] = {"all labels": {"teacher": teacher_acc}, "10% labels": {"teacher": teacher_acc}}
    x_part = np.concatenate([part.x_train, part.x_transfer])
    y_part = np.concatenate([part.y_train, np.full(len(part.x_transfer), NO_LABEL)])
    for setting, data, x, y in (("all labels", full, full.x_train, full.y_train), ("10% labels", part, x_part, y_part)):
        rows[setting]["student alone"] = train_student(data, data.x_train, data.y_train, seed,
                                                       tmp / f"{setting}{seed}alone", epochs)
        for loss in LOGIT_LOSSES:
            rows[setting][f"student + {loss}"] = train_student(data, x, y, seed, tmp / f"{setting}{seed}{loss}",
                                                               epochs, teacher, loss)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for setting, rows in run_seed(seed, args.epochs, Path(tmp)).items():
                for row, acc in rows.items():
                    results.setdefault(setting, {}).setdefault(row, []).append(acc)
            print(f"seed {seed} done ({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
    print(f"digits, {args.seeds} seeds, student {STUDENT.kwargs['channels']} for {args.epochs} epochs, "
          f"teacher {TEACHER.kwargs['channels']}; val top-1 in %, mean ± stdev (min..max)\n")
    print("| setting | model | top-1 % | gain vs alone (pts) |\n|---|---|---:|---:|")
    for setting, rows in results.items():
        alone = statistics.mean(rows["student alone"])
        for row, accs in rows.items():
            pct = [100 * a for a in accs]
            spread = statistics.stdev(pct) if len(pct) > 1 else 0.0
            gain = "" if row in ("teacher", "student alone") else f"{100 * (statistics.mean(accs) - alone):+.2f}"
            print(f"| {setting} | {row} | {statistics.mean(pct):.2f} ± {spread:.2f} ({min(pct):.2f}..{max(pct):.2f}) | {gain} |")
    print("\nper seed, KD gain of each loss in points (seed 0, 1, 2, ...):\n")
    for setting, rows in results.items():
        for row, accs in rows.items():
            if row.startswith("student +"):
                gains = [100 * (a - b) for a, b in zip(accs, rows["student alone"])]
                print(f"- {setting}, {row[len('student + '):]}: " + ", ".join(f"{g:+.2f}" for g in gains))
    print(f"\n({time.perf_counter() - started:.0f}s)")


if __name__ == "__main__":
    main()
