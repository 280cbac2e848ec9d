"""What distillation bought: the KD student against the same student trained alone, on the same images.

Said plainly when KD did not help, and first of all when the teacher itself is no better than the
student alone (then KD cannot help: the student has nothing to learn from it). The better student
is offered (`stages.export.recommend_from`) and the options worth trying next are named with their
values in this run. A student whose best epoch was its last is told to train longer whatever KD
bought; a searched student comes with its trials (compress.reporting.search_trials).
"""

from __future__ import annotations

from typing import Any

from compress.reporting.fmt import pct, pts
from compress.reporting.search_trials import configurations, search_section
from compress.reporting.uncertainty import noise_phrase, paired, top1_interval

CHECKPOINTS = ("teacher", "student", "baseline")  # teacher, student with KD, student alone
LOGIT_LOSSES = "dkd (decoupled KD), lskd (logit standardisation) or dist (class correlations)"


def checkpoint_rows(rows: list[dict], accuracy_only: list[dict]) -> dict[str, dict]:
    """The torch row of each checkpoint: one top-1 and one set of predictions per trained model."""
    found: dict[str, dict] = {}
    for row in [*rows, *accuracy_only]:
        if isinstance(row, dict) and row.get("backend") == "torch" and row.get("model") in CHECKPOINTS:
            found.setdefault(row["model"], row)
    return found


def scores(rows: list[dict], results: dict, outputs: dict) -> dict[str, Any] | None:
    """The three top-1s: from the benchmark (its split, per sample) when it scored both students, else from the
    stages (the validation split that chose their epochs, as results saved before the benchmark scored both)."""
    measured = checkpoint_rows(rows, results.get("accuracy_only") or [])
    teacher = measured.get("teacher")
    if "student" in measured and "baseline" in measured:
        return {"split": results.get("accuracy_split") or "val", "samples": results.get("val_samples"),
                "rows": measured, "teacher": teacher["accuracy"]["top1"] if teacher else None,
                "kd": measured["student"]["accuracy"]["top1"], "alone": measured["baseline"]["accuracy"]["top1"]}
    baseline, distill = outputs.get("baseline") or {}, outputs.get("distill") or {}
    if baseline.get("val_top1") is None or distill.get("val_top1") is None:
        return None
    same_split = (results.get("accuracy_split") or "val") == "val"
    return {"split": "val", "samples": results.get("val_samples") if same_split else None, "rows": {},
            "teacher": teacher["accuracy"]["top1"] if teacher and same_split
            else (outputs.get("teacher") or {}).get("val_top1"),
            "kd": distill["val_top1"], "alone": baseline["val_top1"]}


def outcome_of(gain: float, test: dict | None) -> str:
    if gain > 0:
        return "within_noise" if test and test["within_noise"] else "helped"
    return "lost" if gain < 0 else "no_gain"


def headline(outcome: str, gain: float, kd: float, alone: float, closed: float | None, test: dict | None) -> dict:
    """The KD sentence as lead, bold value and rest, so markdown and HTML render the same words."""
    noise = noise_phrase(test)
    if outcome == "helped":
        rest = " top-1 over the same student trained alone" + (
            f"; it closes {closed * 100:.0f}% of the gap to the teacher" if closed is not None else "") + "."
        return {"lead": "KD gain:", "value": pts(gain), "rest": rest + (f" Paired: {noise}." if noise else "")}
    if outcome == "within_noise":
        return {"lead": "KD gain:", "value": pts(gain), "rest": f" top-1 over the same student trained alone, {noise}: "
                "on these samples KD cannot be told from the student alone."}
    if outcome == "no_gain":
        return {"lead": "KD gain:", "value": pts(gain),
                "rest": f": KD did not help; the student with KD and the student alone both score {pct(kd)}."}
    return {"lead": "KD gain:", "value": pts(gain),
            "rest": f": KD lost to the student alone ({pct(kd)} top-1 with KD, {pct(alone)} for the same student "
                    "trained alone)" + (f"; {noise}" if noise else "") + "."}


def teacher_note(teacher: float | None, alone: float, test: dict | None, split: str, pipeline: dict) -> str | None:
    """Said first when the teacher is no better than the student alone: the reason KD could not help."""
    if teacher is None:
        return None
    if teacher <= alone:
        how = f"The teacher ({pct(teacher)}) is no better than the student trained alone ({pct(alone)})"
    elif test is not None and test["within_noise"]:
        how = (f"The teacher ({pct(teacher)}) is not measurably better than the student trained alone ({pct(alone)}): "
               f"{pts((teacher - alone) * 100)}, {noise_phrase(test)}")
    else:
        return None
    epochs = ((pipeline.get("teacher") or {}).get("train") or {}).get("epochs")
    longer = f"train the teacher longer (teacher.train.epochs is {epochs})" if epochs else "train the teacher longer"
    return (f"{how} on the {split} split, so distillation had nothing to pass on: {longer}, or bring a stronger "
            "checkpoint (teacher.checkpoint), before tuning KD.")


def better_student(rows: list[dict], recommended: str | None, outputs: dict) -> str:
    """Where the student alone stands as a shipping candidate, after it beat the KD student."""
    if any(r["model"] == "baseline" and r["backend"] != "torch" for r in rows):
        if recommended and recommended.startswith("baseline."):
            return (f"The recommended artifact, {recommended}, is the student trained alone: on each engine the "
                    "more accurate of the two students is the candidate.")
        return ("The student alone was benchmarked too (stages.export.recommend_from); on the recommended engine the "
                "KD student scored at least as high.")
    checkpoint = (outputs.get("baseline") or {}).get("checkpoint") or "stages/baseline/student.pt"
    return (f"To ship the student alone, add recommend_from: [distill, baseline] to stages.export: its checkpoint "
            f"({checkpoint}) then goes through export, build and benchmark, and on each engine the more accurate "
            "student is recommended.")


def epochs_idea(pipeline: dict, outputs: dict) -> tuple[str | None, bool]:
    """The "more epochs" idea with this run's numbers, and whether the KD student's best epoch was its last
    (then it was still improving, which is worth saying whatever KD's outcome)."""
    configured = ((pipeline.get("stages") or {}).get("distill") or {}).get("epochs")
    distill = outputs.get("distill") or {}
    trained, best = distill.get("epochs"), distill.get("best_epoch")
    trained = trained if isinstance(trained, int) and trained > 0 else configured
    if not trained:
        return None, False
    now = (f"now {configured}" if configured == trained else
           f"now {configured}; the student trained {trained}" if configured else f"the student trained {trained}")
    still = best is not None and best >= trained
    idea = f"more epochs (stages.distill.epochs, {now})" + (
        f": the best epoch was {best} of {trained}" + (", still improving at the end" if still else "")
        if best is not None else "")
    if still:
        idea += ("; or a larger stages.distill.patience" if distill.get("recipe") == "patient"
                 else "; or recipe: patient (stages.distill.recipe)")
    return idea, still


def what_to_try(pipeline: dict, outputs: dict) -> list[str]:
    """The KD options of this run with their values, and a direction for each."""
    distill = (pipeline.get("stages") or {}).get("distill") or {}
    search = (outputs.get("distill") or {}).get("search")
    if isinstance(search, dict):  # temperature, alpha, loss and lr were the search's to choose
        ideas = [f"a larger search (stages.distill.search: {configurations(search)} trials ran in "
                 f"{search.get('seconds') or 0:.0f} s of a {search.get('budget_seconds') or 0:.0f} s budget): "
                 "more trials or more time"]
        if distill.get("recipe") != "patient":
            ideas.append("recipe: patient (stages.distill.recipe): the same random views for teacher and student, "
                         "three times the epochs; the search then runs on top of it")
        epochs, _ = epochs_idea(pipeline, outputs)
        return ideas + ([epochs] if epochs else [])
    losses = distill.get("losses")
    temperature = distill.get("temperature", 4.0)
    ideas = [f"temperature (stages.distill.temperature, now {temperature:g}): try {temperature / 2:g} and "
             f"{temperature * 2:g}"]
    if losses:
        terms = " + ".join(f"{(l or {}).get('weight', 1):g}*{(l or {}).get('name', '?')}" for l in losses)
        ideas.append(f"the weights of the loss terms (now {terms}): more weight on ce when the teacher errs where "
                     "the labels are right")
    else:
        alpha = distill.get("alpha", 0.9)
        ideas.append(f"alpha (stages.distill.alpha, now {alpha:g}: the weight of KD against the labels' cross-entropy)"
                     f": try {0.5 if alpha > 0.5 else 0.9:g}")
    ideas.append(f"another loss family (stages.distill.losses): {LOGIT_LOSSES}, each beside ce")
    epochs, _ = epochs_idea(pipeline, outputs)
    if epochs:
        ideas.append(epochs)
    return ideas


def ideas_for(outcome: str, pipeline: dict, outputs: dict) -> list[str]:
    """Every idea when KD did not help; when it did, only more epochs, and only if the student was still improving."""
    if outcome != "helped":
        return what_to_try(pipeline, outputs)
    idea, still = epochs_idea(pipeline, outputs)
    return [idea] if still else []


def recipe_line(distill: dict) -> str | None:
    """Said when the KD student trained with the patient recipe: its long schedule is part of what KD bought."""
    if distill.get("recipe") != "patient":
        return None
    epochs = distill.get("epochs")
    return "The student with KD trained with the patient recipe (stages.distill.recipe: patient" + (
        f", {epochs} epochs)." if isinstance(epochs, int) else ").")


def summary_line(outcome: str, gain: float, test: dict | None, teacher_note: str | None) -> str | None:
    """One line for the report's summary when distillation did not pay: the teacher first, then KD."""
    parts = ["the teacher is no better than the student trained alone"] if teacher_note else []
    noise = f", {'within' if test['within_noise'] else 'beyond'} noise" if test else ""
    if outcome == "lost":
        parts.append(f"KD lost to the student alone ({pts(gain)} top-1{noise})")
    elif outcome in ("no_gain", "within_noise"):
        parts.append(f"KD did not measurably help ({pts(gain)} top-1{noise})")
    if not parts:
        return None
    text = "; ".join(parts)
    return f"Distillation: {text} (see What distillation bought)."


def kd_gain(rows: list[dict], results: dict, outputs: dict, pipeline: dict,
            recommended: str | None) -> dict[str, Any] | None:
    """Student with KD minus the same student alone, the teacher beside them, each with its 95% interval."""
    s = scores(rows, results, outputs)
    if s is None:
        return None
    teacher, kd, alone, n = s["teacher"], s["kd"], s["alone"], s["samples"]
    labels, measured = results.get("labels"), s["rows"]
    prediction = {name: (measured.get(name) or {}).get("predictions") for name in CHECKPOINTS}
    kd_vs_alone = paired(prediction["student"], prediction["baseline"], labels)
    teacher_vs_alone = paired(prediction["teacher"], prediction["baseline"], labels)
    gain = (kd - alone) * 100
    closed = (kd - alone) / (teacher - alone) if teacher is not None and teacher > alone and kd > alone else None
    outcome = outcome_of(gain, kd_vs_alone)
    note = teacher_note(teacher, alone, teacher_vs_alone, s["split"], pipeline)
    distill, baseline = outputs.get("distill") or {}, outputs.get("baseline") or {}
    search = search_section(distill, baseline, s["split"], pipeline)
    return {
        "teacher_top1": teacher, "student_kd_top1": kd, "student_alone_top1": alone, "kd_gain_pts": gain,
        # student minus teacher, as every Δ top-1 of the report: negative when the student is below
        "kd_delta_vs_teacher_pts": (kd - teacher) * 100 if teacher is not None else None,
        "alone_delta_vs_teacher_pts": (alone - teacher) * 100 if teacher is not None else None,
        "gap_closed": closed,
        "student_kd_best_epoch": distill.get("best_epoch"), "student_alone_best_epoch": baseline.get("best_epoch"),
        "split": s["split"], "samples": n,
        "intervals": {"teacher": top1_interval(teacher, n), "kd": top1_interval(kd, n),
                      "alone": top1_interval(alone, n)},
        "kd_vs_alone": kd_vs_alone, "teacher_vs_alone": teacher_vs_alone, "outcome": outcome,
        "teacher_note": note, "summary": summary_line(outcome, gain, kd_vs_alone, note),
        "headline": headline(outcome, gain, kd, alone, closed, kd_vs_alone),
        "better_student": better_student(rows, recommended, outputs) if outcome == "lost" else None,
        "try": ideas_for(outcome, pipeline, outputs),
        "still_improving": epochs_idea(pipeline, outputs)[1],
        "recipe_line": recipe_line(distill),
        # the best of how many trained students each side is: 1 without a search
        "configurations_tried": {"kd": configurations(distill.get("search")),
                                 "alone": configurations(baseline.get("search"))},
        "search": search,
    }
