"""KD gain: the teacher, the student alone, and the student with KD, over seeds, on digits or on texts.

Two settings per task: all labels; labels kept on a stratified 10% of the train split with the
other 90% as an unlabelled transfer set. The teacher is trained on all train labels in both (it
stands for a checkpoint you already have); the student alone sees only the labels of its setting,
for as many epochs as the KD students (what the baseline stage does). With 10% of the labels that
is a tenth of their optimizer steps, so the 10% setting has one more row, "student alone, KD's
steps": as many epochs as give it the KD students' number of steps.
Every row trains with `compress.distill.train.fit` and `compress.distill.objective.Objective`, as
the distill and baseline stages call them, so an interface change breaks this script, not its numbers.

- digits (default): teacher cnn[32,64,128], student cnn[8,16,32]; each KD row is
  `0.9 * LOSS + 0.1 * CE` at the loss's default options (`kd` is the distill stage's default).
- text: examples/text. Its make_texts.py writes the texts (seeded by the run's seed), and its
  pipeline.yaml, read by the pipeline's own parser, gives the data options, both models, the
  training options and the KD objective. Rows: the student alone (the baseline stage: random
  init); the student started from the teacher's layers (`init_from_teacher`) without KD, which
  says what the init alone buys; KD from a random init; and the example's distill stage (init
  from the teacher + its losses). Targets (issue 13): KD >= +1 point over the student alone, or
  >= +5 with 10% labels and a transfer set.

- recipes (`--task recipes`): the distill stage's ways, run by the stages themselves
  (compress.stages: teacher, baseline, distill with a StageContext, as `compress run` runs them) on
  the bundled digits (half held out for val) and on the image-folder example's photo patches
  (examples/imagefolder's make_images.py: real photographs, its augmentation, 32x32 crops), a cnn
  teacher [32, 64, 128] and a student with an eighth of its channels: default KD (the stage's
  defaults: kd at T 4, alpha 0.9), the patient recipe (`recipe: patient`: the baseline trains as
  long on the same views), the budgeted search (`search: {trials, budget}`: the baseline given the
  same search), and the search on top of the patient recipe (three times the budget: its trials
  are three times as long). Each KD student against its own baseline, and against the default's
  student alone: the share of the teacher-student gap it closes, per seed, with a 95% t-interval
  over seeds. Targets (issue 27): searched >= 30%, patient >= 20%, on both data sets; the search's
  wall time within its budget (+10%).

    python benchmarks/kd_gain.py [--task digits|text|recipes] [--seeds 3] [--threads 1] [--recipes ...]
    python benchmarks/kd_gain.py --smoke    # every task, 1 seed, 1 epoch, fewest texts: seconds
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
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress.config import DataConfig, TrainConfig, TransferConfig  # noqa: E402
from compress.data import load_dataset  # noqa: E402
from compress.data.transfer import split_labels  # noqa: E402
from compress.distill.objective import LossSpec, Objective  # noqa: E402
from compress.distill.search import duration_seconds  # noqa: E402
from compress.distill.train import fit  # noqa: E402
from compress.models import ModelSpec, build_model  # noqa: E402
from compress.stages.distill import training_inputs  # noqa: E402

LOGIT_LOSSES = ["kd", "dkd", "lskd", "dist", "mse"]
TEACHER = ModelSpec("cnn", 1, 10, 8, {"channels": [32, 64, 128]})
STUDENT = ModelSpec("cnn", 1, 10, 8, {"channels": [8, 16, 32]})
TEXT_EXAMPLE = ROOT / "examples" / "text"
TEXT_TARGETS = {"all labels": 1.0, "10% labels": 5.0}  # points over the student alone (issue 13)
TEXT_KD_ROW = "student + KD (the example's distill)"
ALONE_SAME_STEPS = "student alone, KD's steps"
SMOKE = {"seeds": 1, "epochs": 1, "teacher_epochs": 1, "texts": 160, "trials": 2, "budget": "30s", "per_class": 8}


def quiet(_: str) -> None:
    pass


def new(spec: ModelSpec, seed: int):
    torch.manual_seed(seed)
    return build_model(spec)


def train(model, train_split, val_split, cfg: TrainConfig, seed: int, work: Path, teacher=None,
          specs: list[LossSpec] | None = None, temperature: float = 4.0) -> float:
    """Best val top-1 of `model` fitted as the stages fit it: CE alone, or the KD objective over `specs`."""
    work.mkdir(parents=True, exist_ok=True)
    objective = None
    if specs is not None:
        objective = Objective(specs, model, teacher, train_split, cfg, temperature,
                              use_cache=getattr(cfg, "teacher_cache", True), log=quiet, cache_dir=work / "teacher_cache")
    try:
        return fit(model, train_split, val_split, cfg, work, seed, loss_fn=objective, log=quiet,
                   extra_modules=objective.modules if objective else None).best_accuracy
    finally:
        if objective is not None:
            objective.close()


def same_steps(cfg: TrainConfig, labelled: int, with_transfer: int) -> TrainConfig:
    """`cfg` with the epochs that give `labelled` inputs the optimizer steps `cfg` gives `with_transfer`."""
    steps = -(-with_transfer // cfg.batch_size) * cfg.epochs
    return cfg.model_copy(update={"epochs": -(-steps // -(-labelled // cfg.batch_size))})


def digits_seed(seed: int, args, tmp: Path) -> dict[str, dict[str, float]]:
    full = load_dataset(DataConfig(source="digits"), seed)
    part = load_dataset(DataConfig(source="digits", transfer=TransferConfig(labeled_fraction=0.1)), seed)
    teacher = new(TEACHER, seed)
    teacher_cfg = TrainConfig(epochs=args.teacher_epochs or 8, batch_size=64, lr=0.003, weight_decay=1e-4,
                              progress=False)
    teacher_acc = train(teacher, full.train, full.val, teacher_cfg, seed, tmp / f"teacher{seed}")
    cfg = TrainConfig(epochs=args.epochs or 15, batch_size=64, lr=0.005, progress=False)
    rows: dict[str, dict[str, float]] = {}
    for setting, data in (("all labels", full), ("10% labels", part)):
        work = tmp / f"{setting[:3]}{seed}"
        rows[setting] = {"teacher": teacher_acc,
                         "student alone": train(new(STUDENT, seed), data.train, data.val, cfg, seed, work / "alone")}
        if data.transfer is not None:
            rows[setting][ALONE_SAME_STEPS] = train(new(STUDENT, seed), data.train, data.val,
                                                    same_steps(cfg, len(data.train), len(training_inputs(data))),
                                                    seed, work / "alone_steps")
        for loss in LOGIT_LOSSES:
            specs = [LossSpec(name=loss, weight=0.9), LossSpec(name="ce", weight=0.1)]
            rows[setting][f"student + {loss}"] = train(new(STUDENT, seed), training_inputs(data), data.val, cfg, seed,
                                                       work / loss, teacher, specs)
    return rows


def text_pipeline(folder: Path, args):
    """examples/text/pipeline.yaml on texts written into `folder`, with this run's epochs where given."""
    from compress.runner import parse_pipeline

    raw = yaml.safe_load((TEXT_EXAMPLE / "pipeline.yaml").read_text())
    raw["data"].update(path=str(folder / "train.csv"), val_path=str(folder / "val.csv"))
    raw["teacher"]["train"].update(progress=False, **({"epochs": args.teacher_epochs} if args.teacher_epochs else {}))
    raw["stages"]["distill"].update(progress=False, **({"epochs": args.epochs} if args.epochs else {}))
    return parse_pipeline(raw, str(TEXT_EXAMPLE / "pipeline.yaml"), folder)


def text_seed(seed: int, args, tmp: Path) -> dict[str, dict[str, float]]:
    if str(TEXT_EXAMPLE) not in sys.path:
        sys.path.insert(0, str(TEXT_EXAMPLE))
    import make_texts

    from compress.tasks.registry import task_for
    from compress.tasks.text_classification.text_split import join_texts
    from compress.models.text_models import init_every_other

    folder = tmp / f"texts{seed}"
    make_texts.main([str(folder), "--train", str(args.texts), "--val", str(args.texts // 5), "--seed", str(seed)])
    pipeline = text_pipeline(folder, args)
    task = task_for(pipeline)
    data = task.load_data(seed)
    distill = pipeline.stages["distill"]
    teacher = new(task.model_spec(pipeline.teacher, data), seed)
    teacher_acc = train(teacher, data.train, data.val, pipeline.teacher.train, seed, tmp / f"teacher{seed}")

    def student(from_teacher: bool):
        model = new(task.model_spec(pipeline.student, data), seed)
        if from_teacher:
            init_every_other(model, teacher)
        return model

    labelled, _, unlabelled = split_labels(np.arange(len(data.train)), data.train.labels, 0.1, seed)
    part = data.train.subset(np.sort(labelled))
    transfer = join_texts(part, data.train.subset(np.sort(unlabelled)).unlabelled())
    if len(transfer) != len(data.train) or int((transfer.labels >= 0).sum()) != len(part):
        raise SystemExit(f"10% labels: {len(part)} labelled + {len(transfer) - len(part)} transfer texts do not make "
                         f"up the {len(data.train)} train texts")
    settings = {"all labels": (data.train, data.train), "10% labels": (part, transfer)}
    rows: dict[str, dict[str, float]] = {}
    for setting, (labels_only, with_transfer) in settings.items():
        work = tmp / f"{setting[:3]}{seed}"
        rows[setting] = {
            "teacher": teacher_acc,
            "student alone": train(student(False), labels_only, data.val, distill, seed, work / "alone"),
            **({ALONE_SAME_STEPS: train(student(False), labels_only, data.val,
                                        same_steps(distill, len(labels_only), len(with_transfer)), seed,
                                        work / "alone_steps")} if len(labels_only) < len(with_transfer) else {}),
            "student, init from teacher, no KD": train(student(True), labels_only, data.val, distill, seed,
                                                       work / "init"),
            "student + KD, random init": train(student(False), with_transfer, data.val, distill, seed, work / "kd",
                                               teacher, distill.loss_specs(), distill.temperature),
            TEXT_KD_ROW: train(student(pipeline.student.init_from_teacher == "every_other"), with_transfer, data.val,
                               distill, seed, work / "distill", teacher, distill.loss_specs(), distill.temperature)}
    return rows


RECIPES = ("default", "patient", "searched", "patient + search")
RECIPE_TEACHER, RECIPE_STUDENT = (32, 64, 128), (4, 8, 16)  # the student: an eighth of the teacher's channels
SEARCH_BUDGETS = {"digits": "30s", "photos": "180s"}  # each of KD's and the baseline's searches
RECIPE_TARGETS = {"patient": 0.20, "searched": 0.30, "patient + search": 0.30}  # share of the teacher-student gap closed (issue 27)
PHOTO_EXAMPLE = ROOT / "examples" / "imagefolder"


def recipe_raw(data_set: str, folder: Path, args) -> dict:
    """The pipeline of a recipe run: the data set, the cnn teacher and student, baseline and distill stages."""
    if data_set == "digits":
        data = {"source": "digits", "val_fraction": 0.5}  # 899 val images: a point is 9 of them, not 3.6
    else:
        data = {"source": "imagefolder", "path": str(folder / "train"), "val_path": str(folder / "val"),
                "image_size": 32, "augment": {"random_resized_crop": True, "crop_scale": [0.35, 1.0], "flip": True},
                "workers": 0}
    epochs = args.epochs or 15
    return {"name": f"kd-{data_set}", "seed": 0, "data": data,
            "teacher": {"model": "cnn", "kwargs": {"channels": list(RECIPE_TEACHER)},
                        "train": {"epochs": args.teacher_epochs or 30, "batch_size": 32, "lr": 0.003,
                                  "weight_decay": 1e-4, "progress": False}},
            "student": {"model": "cnn", "kwargs": {"channels": list(RECIPE_STUDENT)}},
            "stages": {"baseline": {},
                       "distill": {"epochs": epochs, "batch_size": 32, "lr": 0.005, "progress": False}}}


def run_stages(raw: dict, run_dir: Path, names: list[str], outputs: dict, prefix: str = "") -> dict:
    """Run `names` through the stages' own code (compress.runner's StageContext), adding to `outputs`;
    each in stages/PREFIXNAME, so the recipes of one data set share its teacher's run folder."""
    from compress.runner import parse_pipeline
    from compress.stages import STAGES
    from compress.stages.contract import StageContext
    from compress.tasks.registry import task_for

    pipeline = parse_pipeline(raw, str(run_dir / "pipeline.yaml"), run_dir)
    loaded: list = []

    def data():
        if not loaded:
            loaded.append(task_for(pipeline).load_data(pipeline.seed))
        return loaded[0]

    for name in names:
        stage_dir = run_dir / "stages" / f"{prefix}{name}"
        stage_dir.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(name=name, pipeline=pipeline, config=pipeline.stages.get(name), run_dir=run_dir,
                           stage_dir=stage_dir, outputs=outputs, log=quiet, _dataset_loader=data)
        outputs[name] = STAGES[name]().run(ctx)
    return outputs


def recipes_seed(seed: int, args, tmp: Path) -> dict[str, dict[str, float]]:
    """Per data set: the teacher, and each recipe's KD student and its own baseline (val top-1)."""
    rows: dict[str, dict[str, float]] = {}
    for data_set in args.data_sets:
        folder = tmp / f"{data_set}{seed}"
        if data_set == "photos":
            if str(PHOTO_EXAMPLE) not in sys.path:
                sys.path.insert(0, str(PHOTO_EXAMPLE))
            import make_images

            make_images.main(["--out", str(folder / "images"), "--seed", str(seed),
                              *(["--per-class", str(args.per_class)] if args.per_class else [])])
        raw = recipe_raw(data_set, folder / "images", args)
        raw["seed"] = seed
        teacher = run_stages(raw, folder, ["teacher"], {})["teacher"]
        setting = rows.setdefault(data_set, {"teacher": teacher["val_top1"]})
        for recipe in args.recipes:
            distill = dict(raw["stages"]["distill"])
            if "patient" in recipe:
                distill["recipe"] = "patient"
            if "search" in recipe:
                budget = args.budget or SEARCH_BUDGETS[data_set]
                if "patient" in recipe:  # trials of three times the epochs: three times the time
                    budget = f"{3 * duration_seconds(budget):.0f}s"
                distill["search"] = {"trials": args.trials, "budget": budget}
            recipe_config = {**raw, "stages": {"baseline": {}, "distill": distill}}
            started = time.perf_counter()
            outputs = run_stages(recipe_config, folder, ["baseline", "distill"], {"teacher": teacher},
                                 f"{recipe.replace(' + ', '-')}-")
            setting[f"KD, {recipe}"] = outputs["distill"]["val_top1"]
            setting[f"alone, {recipe}"] = outputs["baseline"]["val_top1"]
            if "search" in recipe:
                for stage in ("distill", "baseline"):
                    search = outputs[stage]["search"]
                    setting[f"search seconds / budget, {recipe}, {stage}"] = search["seconds"] / search["budget_seconds"]
                    setting[f"trials run, {recipe}, {stage}"] = search["trials_run"]
            print(f"recipes {data_set} seed {seed} {recipe}: teacher {teacher['val_top1']:.4f}, KD {outputs['distill']['val_top1']:.4f}, alone "
                  f"{outputs['baseline']['val_top1']:.4f} ({time.perf_counter() - started:.0f}s)", file=sys.stderr,
                  flush=True)
    return rows


def gap_closed(kd: list[float], alone: list[float], teacher: list[float]) -> list[float]:
    """Per seed: (KD - alone) / (teacher - alone); NaN where the teacher is no better than the student alone."""
    return [(k - a) / (t - a) if t > a else float("nan") for k, a, t in zip(kd, alone, teacher)]


def interval95(values: list[float]) -> tuple[float, float]:
    """Mean +- Student's t 95% half-width over seeds (the seeds are the samples)."""
    from scipy import stats

    if len(values) < 2:
        return values[0], float("nan")
    return statistics.mean(values), stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5


def print_recipes(results: dict[str, dict[str, list[float]]], args) -> None:
    print(f"\nKD recipes through the stages: cnn teacher {list(RECIPE_TEACHER)} ({args.teacher_epochs or 30} epochs) -> "
          f"student {list(RECIPE_STUDENT)}, {args.epochs or 15} student epochs (patient: x3), search up to "
          f"{args.trials} trials in {args.budget or SEARCH_BUDGETS}; digits with half held out for val, photos "
          f"{args.per_class} train / {args.per_class // 4} val per class at 32x32; {args.seeds} seed(s), "
          f"{args.threads} thread(s); val top-1 in %; gap closed = (KD - its alone) / (teacher - its alone)\n")
    print("| data | recipe | teacher | KD | alone (its own) | KD gain (pts) | gap closed, per seed | mean, 95% CI "
          "| vs the default's alone |")
    print("|---|---|---:|---:|---:|---:|---|---|---|")
    verdicts = []
    for data_set, rows in results.items():
        for recipe in args.recipes:
            kd, alone, teacher = rows[f"KD, {recipe}"], rows[f"alone, {recipe}"], rows["teacher"]
            closed = gap_closed(kd, alone, teacher)
            mean, half = interval95(closed)
            plain = ""
            if "alone, default" in rows:  # the student alone as a user would first train it
                plain_mean, plain_half = interval95(gap_closed(kd, rows["alone, default"], teacher))
                plain = f"{100 * plain_mean:.0f}% ± {100 * plain_half:.0f}"
            print(f"| {data_set} | {recipe} | {100 * statistics.mean(teacher):.2f} | {100 * statistics.mean(kd):.2f} "
                  f"| {100 * statistics.mean(alone):.2f} | {100 * (statistics.mean(kd) - statistics.mean(alone)):+.2f} "
                  f"| {', '.join(f'{100 * c:.0f}%' for c in closed)} | {100 * mean:.0f}% ± {100 * half:.0f} | {plain} |")
            if recipe in RECIPE_TARGETS:
                target = RECIPE_TARGETS[recipe]
                verdicts.append(f"- target, {data_set}, {recipe}: closes {100 * mean:.0f}% of the gap (mean of seeds; "
                                f">= {100 * target:.0f}%: {'met' if mean >= target else 'MISSED'})")
        for recipe, stage in ((r, s) for r in args.recipes for s in ("distill", "baseline")):
            ratio = rows.get(f"search seconds / budget, {recipe}, {stage}")
            if ratio:
                trials = rows[f"trials run, {recipe}, {stage}"]
                verdicts.append(f"- search wall time, {data_set}, {recipe}, {stage}: "
                                f"{', '.join(f'{100 * r:.0f}%' for r in ratio)}"
                                f" of the budget ({', '.join(str(int(t)) for t in trials)} trials; within +10%: "
                                f"{'met' if max(ratio) <= 1.10 else 'MISSED'})")
    print("\n" + "\n".join(verdicts))


def describe(task: str, args) -> str:
    if task == "digits":
        return (f"digits, student {STUDENT.kwargs['channels']} for {args.epochs or 15} epochs, teacher "
                f"{TEACHER.kwargs['channels']} for {args.teacher_epochs or 8}")
    return (f"text (examples/text/pipeline.yaml, {args.texts} train / {args.texts // 5} val texts per seed, teacher "
            f"{args.teacher_epochs or 'its'} epochs, students {args.epochs or 'the distill stage'} epochs)")


def print_results(task: str, results: dict[str, dict[str, list[float]]], args) -> None:
    print(f"\n{describe(task, args)}; {args.seeds} seed(s), {args.threads} thread(s); val top-1 in %, "
          "mean ± stdev (min..max)\n")
    print("| setting | model | top-1 % | gain vs alone (pts) |\n|---|---|---:|---:|")
    for setting, rows in results.items():
        alone = statistics.mean(rows["student alone"])
        for row, accs in rows.items():
            pct = [100 * a for a in accs]
            spread = statistics.stdev(pct) if len(pct) > 1 else 0.0
            gain = "" if row in ("teacher", "student alone") else f"{100 * (statistics.mean(accs) - alone):+.2f}"
            print(f"| {setting} | {row} | {statistics.mean(pct):.2f} ± {spread:.2f} ({min(pct):.2f}..{max(pct):.2f}) "
                  f"| {gain} |")
    print("\nper seed, gain over the student alone in points (seed 0, 1, 2, ...):\n")
    for setting, rows in results.items():
        for row, accs in rows.items():
            if row not in ("teacher", "student alone"):
                gains = [100 * (a - b) for a, b in zip(accs, rows["student alone"])]
                print(f"- {setting}, {row}: " + ", ".join(f"{g:+.2f}" for g in gains))
    if task == "text":
        print()
        for setting, target in TEXT_TARGETS.items():
            rows = results[setting]
            for alone in ("student alone", ALONE_SAME_STEPS):
                if alone in rows:
                    gain = 100 * (statistics.mean(rows[TEXT_KD_ROW]) - statistics.mean(rows[alone]))
                    print(f"- target, {setting}: {TEXT_KD_ROW} {gain:+.2f} pts over the {alone} (target >= "
                          f"+{target:g}: {'met' if gain >= target else 'MISSED'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["digits", "text", "recipes"], action="append",
                        help="repeatable; default digits (with --smoke: every task)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (digits 15; text: the example's)")
    parser.add_argument("--teacher-epochs", type=int, default=None, help="digits 8; text: the example's")
    parser.add_argument("--texts", type=int, default=4000, help="train texts per seed (val: a fifth as many)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-sets", nargs="+", choices=["digits", "photos"], default=["digits", "photos"],
                        help="recipes: which data sets")
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES), help="recipes: which rows")
    parser.add_argument("--trials", type=int, default=40, help="recipes: the search's trials (the budget binds)")
    parser.add_argument("--budget", default=None, help="recipes: the search's budget, each of KD and baseline "
                                                       f"(default: {SEARCH_BUDGETS})")
    parser.add_argument("--per-class", type=int, default=150, help="recipes: photo patches per class (val: a quarter)")
    parser.add_argument("--smoke", action="store_true", help="smallest sizes, one seed: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update(SMOKE)
    tasks = args.task or (["digits", "text", "recipes"] if args.smoke else ["digits"])
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    for task in tasks:
        results: dict[str, dict[str, list[float]]] = {}
        with tempfile.TemporaryDirectory(prefix=f"kd_gain_{task}_") as tmp:
            for seed in range(args.seeds):
                per_seed = {"digits": digits_seed, "text": text_seed, "recipes": recipes_seed}[task](seed, args, Path(tmp))
                for setting, rows in per_seed.items():
                    for row, acc in rows.items():
                        results.setdefault(setting, {}).setdefault(row, []).append(acc)
                print(f"{task} seed {seed} done ({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
        if task == "recipes":
            print_recipes(results, args)
        else:
            print_results(task, results, args)
    print(f"\n({time.perf_counter() - started:.0f}s)")


if __name__ == "__main__":
    main()
