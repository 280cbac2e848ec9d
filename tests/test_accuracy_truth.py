"""The report tells the truth about accuracy: intervals, paired tests, a held-out test split, KD that lost.

Run dirs are written by hand in the run-dir contract (as in test_report.py), with per-sample
predictions chosen so that each paired verdict is known in advance; one end-to-end run checks that
the real stages write what these tests read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from compress.cli import main
from compress.config import DataConfig
from compress.core.fileio import read_json
from compress.data import load_dataset
from compress.reporting import fmt
from compress.reporting.charts import tradeoff_figure
from compress.reporting.uncertainty import mcnemar_exact, paired, paired_interval, wilson
from tests.test_report import row, write_run

N = 800
LABELS = [i % 10 for i in range(N)]


def predictions(right: range | set) -> str:
    """Predicted classes that are right exactly on the samples in `right` (wrong by one class elsewhere)."""
    return " ".join(str(y if i in right else (y + 1) % 10) for i, y in enumerate(LABELS))


def window(start: int, count: int) -> set:
    """`count` right answers starting at `start`: two windows overlap, so each model is right where the other errs."""
    return {(start + k) % N for k in range(count)}


def scored(model: str, backend: str, precision: str, batch: int, p50: float, right: set, size_mb: float = 0.4) -> dict:
    return {**row(model, backend, precision, batch, p50, len(right) / N, size_mb), "predictions": predictions(right)}


def rewrite(run_dir: Path, rows: list[dict], outputs: dict | None = None, accuracy_only: list[dict] | None = None,
            split: str = "val") -> Path:
    """Replace a written run's benchmark rows (and stage outputs) by ones with per-sample predictions."""
    path = run_dir / "stages" / "benchmark" / "results.json"
    results = read_json(path)
    results.update(rows=rows, labels=" ".join(map(str, LABELS)), val_samples=N, accuracy_split=split,
                   accuracy_only=accuracy_only or [])
    path.write_text(json.dumps(results))
    if outputs:
        record = read_json(run_dir / "run.json")
        for stage, extra in outputs.items():
            record["stages"][stage]["outputs"].update(extra)
        (run_dir / "run.json").write_text(json.dumps(record))
    return run_dir


def report_of(run_dir: Path) -> tuple[str, dict, str]:
    assert main(["--quiet", "report", str(run_dir)]) == 0
    return ((run_dir / "report.md").read_text(), read_json(run_dir / "report.json"),
            (run_dir / "report.html").read_text())


# --- the statistics ------------------------------------------------------------------------------

def test_wilson_intervals_and_exact_mcnemar_match_hand_computed_values():
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # never below 0, unlike the normal interval
    assert wilson(779, 800) == pytest.approx((0.9602, 0.9828), abs=1e-4)
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # six discordant pairs, all one way
    assert mcnemar_exact(3, 5) == pytest.approx(2 * (1 + 8 + 28 + 56) / 256)
    assert mcnemar_exact(0, 0) == 1.0
    low, high = paired_interval(3, 5, 100)
    assert low < -0.02 < high and low < 0 < high

    test = paired(predictions(window(0, 779)), predictions(window(20, 785)), LABELS)
    assert (test["a_only"], test["b_only"], test["n"]) == (15, 21, N)  # the second window wraps to 0..4
    assert test["difference"] == pytest.approx(-6 / N) and test["within_noise"]
    assert paired("1 2", "1 2 3", [1, 2, 3]) is None  # samples that do not line up give no verdict


def test_a_negative_zero_is_printed_as_zero():
    assert fmt.num(-0.0, ".4g") == "0" and fmt.num(-1e-9, ".3f") == "0.000"
    assert fmt.pts(-0.001) == "+0.00 pts" and fmt.pts(-0.2) == "-0.20 pts"
    assert fmt.num(-1e-5, ".4g") == "-1e-05"  # a real negative keeps its sign


# --- accuracy with its uncertainty ---------------------------------------------------------------

def test_every_top1_has_its_interval_and_student_vs_teacher_is_a_paired_verdict(tmp_path):
    run_dir = write_run(tmp_path / "r1", gates={"max_accuracy_drop": 0.03}, device=False, deferred=False)
    rows = [scored("teacher", "torch", "fp32", 1, 10.0, window(0, 784), 4.0),
            scored("student", "torch", "fp32", 1, 3.0, window(0, 779)),
            scored("student", "onnxruntime", "fp32", 1, 1.5, window(0, 779))]
    md, report, html = report_of(rewrite(run_dir, rows))
    h = report["headline"]
    assert h["recommended"] == "student.onnxruntime.fp32"
    assert h["top1_interval"] == pytest.approx(wilson(779, N)) and h["vs_teacher"]["within_noise"] is True
    # 779 vs 784 of 800 on the same images, the student right nowhere the teacher is wrong: 5 discordant pairs.
    assert "- Top-1: 97.38% (95% CI 96.0–98.3%) vs teacher 98.00% (96.8–98.8%) (**-0.62 pts**; paired" in md
    assert "within noise (exact McNemar p = 0.062; 0 vs 5 of 800 images only one of the two got right)" in md
    assert "| 97.38% | 96.0–98.3% |" in md and "top-1 95% CI" in md
    assert "96.0–98.3%" in html and "paired p = 0.062" in html
    gate = report["gates"][0]
    assert gate["passed"] and "(95% interval" in gate["detail"] and "within noise of the limit" not in gate["detail"]


def test_an_accuracy_gate_within_noise_of_its_limit_says_a_rerun_may_flip_it(tmp_path):
    run_dir = write_run(tmp_path / "r1", gates={"max_accuracy_drop": 0.01}, device=False, deferred=False)
    rows = [scored("teacher", "torch", "fp32", 1, 10.0, window(0, 784), 4.0),
            scored("student", "onnxruntime", "fp32", 1, 1.5, window(10, 778))]  # 0.75 points down: passes
    md, report, _ = report_of(rewrite(run_dir, rows))
    gate = report["gates"][0]
    assert gate["passed"] and gate["detail"].startswith("top-1 drop vs teacher 0.75 points (95% interval ")
    assert gate["detail"].endswith("; within noise of the limit: a rerun on other samples may fail")
    assert "a rerun on other samples may fail" in md

    rows[1] = scored("student", "onnxruntime", "fp32", 1, 1.5, window(10, 774))  # 1.25 points down: fails
    _, report, _ = report_of(rewrite(run_dir, rows))
    assert not report["gates"][0]["passed"] and report["gates"][0]["detail"].endswith("may pass")

    rows[1] = scored("student", "onnxruntime", "fp32", 1, 1.5, window(0, 760))  # 3 points down, 24 pairs one way
    _, report, _ = report_of(rewrite(run_dir, rows))
    assert "within noise" not in report["gates"][0]["detail"]


def test_an_equal_top1_shows_no_minus_zero_in_the_gate_table(tmp_path):
    run_dir = write_run(tmp_path / "r1", gates={"max_accuracy_drop": 0.03}, device=False, deferred=False)
    rows = [scored("teacher", "torch", "fp32", 1, 10.0, window(0, 784), 4.0),
            scored("student", "onnxruntime", "fp32", 1, 1.5, window(0, 784))]
    md, _, html = report_of(rewrite(run_dir, rows))
    assert "| max_accuracy_drop | 0.03 | 0 | PASS | top-1 drop vs teacher 0.00 points (95% interval" in md
    assert "| -0 |" not in md and "-0.00" not in md
    assert '<td class="n">-0</td>' not in html


# --- KD that did not help ------------------------------------------------------------------------

ISSUE_RUN = {"teacher": window(0, 778), "student": window(15, 779), "baseline": window(30, 785)}  # 97.25/97.38/98.12


def issue_rows(ship_alone: bool) -> list[dict]:
    """The run of the issue: the teacher below the student alone, which beats the KD student."""
    rows = []
    for batch, scale in ((1, 1.0), (8, 4.0)):
        rows += [scored("teacher", "torch", "fp32", batch, 10.0 * scale, ISSUE_RUN["teacher"], 4.0),
                 scored("student", "torch", "fp32", batch, 3.0 * scale, ISSUE_RUN["student"]),
                 scored("student", "onnxruntime", "fp32", batch, 1.50 * scale, ISSUE_RUN["student"])]
        if ship_alone:
            rows += [scored("baseline", "torch", "fp32", batch, 3.02 * scale, ISSUE_RUN["baseline"]),
                     scored("baseline", "onnxruntime", "fp32", batch, 1.52 * scale, ISSUE_RUN["baseline"])]
    return rows


def issue_run(tmp_path: Path, ship_alone: bool) -> Path:
    run_dir = write_run(tmp_path / "issue", device=False, deferred=False)
    pipeline = yaml.safe_load((run_dir / "pipeline.yaml").read_text())
    pipeline.update(teacher={"model": "resnet32x4", "train": {"epochs": 6}},
                    stages={"distill": {"epochs": 20, "temperature": 4.0, "alpha": 0.9}})
    (run_dir / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    alone = [] if ship_alone else [{"model": "baseline", "artifact": "stages/baseline/student.pt", "backend": "torch",
                                    "precision": "fp32", "accuracy": {"top1": 785 / N},
                                    "predictions": predictions(ISSUE_RUN["baseline"])}]
    return rewrite(run_dir, issue_rows(ship_alone), accuracy_only=alone, split="test",
                   outputs={"distill": {"best_epoch": 20}, "baseline": {"val_top1": 0.99}})


def test_a_baseline_that_beats_the_kd_student_is_said_plainly_and_recommended(tmp_path):
    md, report, html = report_of(issue_run(tmp_path, ship_alone=True))
    kd = report["kd_gain"]
    assert kd["outcome"] == "lost" and kd["split"] == "test" and kd["gap_closed"] is None
    assert kd["student_alone_top1"] == pytest.approx(785 / N)  # the benchmark's test score, not the stage's val 0.99
    assert ("- **Distillation: the teacher is no better than the student trained alone; KD lost to the student alone "
            "(-0.75 pts top-1, within noise) (see What distillation bought).**") in md
    section = md.split("## What distillation bought")[1].split("## Training")[0]
    # The teacher is said first: it is why KD could not help.
    assert section.index("**First, the teacher.** The teacher (97.25%) is no better than the student trained alone "
                         "(98.12%) on the test split") < section.index("KD gain: **-0.75 pts**: KD lost to the student alone")
    assert "train the teacher longer (teacher.train.epochs is 6), or bring a stronger checkpoint" in section
    assert "within noise (exact McNemar p = " in section and "closes" not in section and "gap closed" not in html
    assert "| student alone (baseline) | 98.12% | 96.9–98.9% |" in section
    # The better student on each engine is the candidate: the student alone, though 0.02 ms slower.
    assert report["headline"]["recommended"] == "baseline.onnxruntime.fp32"
    assert "**baseline.onnxruntime.fp32**" in md and "(the student trained alone: the more accurate student" in md
    assert "The recommended artifact, baseline.onnxruntime.fp32, is the student trained alone" in section
    for idea in ("temperature (stages.distill.temperature, now 4): try 2 and 8", "alpha (stages.distill.alpha, now 0.9",
                 "another loss family (stages.distill.losses): dkd",
                 "more epochs (stages.distill.epochs, now 20): the best epoch was 20 of 20, still improving"):
        assert idea in section, idea
    assert "KD gain: <strong>-0.75 pts</strong>: KD lost to the student alone" in html and "First, the teacher." in html


def test_kd_that_lost_offers_the_student_alone_when_it_was_not_shipped(tmp_path, capsys):
    run_dir = issue_run(tmp_path, ship_alone=False)
    md, report, _ = report_of(run_dir)
    assert report["kd_gain"]["outcome"] == "lost" and report["headline"]["recommended"] == "student.onnxruntime.fp32"
    assert ("To ship the student alone, add recommend_from: [distill, baseline] to stages.export: its checkpoint "
            "(stages/baseline/student.pt) then goes through export, build and benchmark") in md


def test_a_small_kd_gain_is_within_noise_and_a_clear_one_is_not(tmp_path):
    run_dir = write_run(tmp_path / "r1", device=False, deferred=False)
    teacher, alone = window(0, 790), window(40, 700)
    rows = [scored("teacher", "torch", "fp32", 1, 10.0, teacher, 4.0),
            scored("student", "torch", "fp32", 1, 3.0, window(20, 704)),
            scored("student", "onnxruntime", "fp32", 1, 1.5, window(20, 704))]
    alone_row = {"model": "baseline", "artifact": "stages/baseline/student.pt", "backend": "torch", "precision": "fp32",
                 "accuracy": {"top1": 700 / N}, "predictions": predictions(alone)}
    md, report, _ = report_of(rewrite(run_dir, rows, accuracy_only=[alone_row]))
    assert report["kd_gain"]["outcome"] == "within_noise"
    assert "KD gain: **+0.50 pts** top-1 over the same student trained alone, within noise" in md
    assert "on these samples KD cannot be told from the student alone" in md and "What to try next:" in md

    rows[1:] = [scored("student", b, "fp32", 1, p, window(40, 760)) for b, p in (("torch", 3.0), ("onnxruntime", 1.5))]
    md, report, _ = report_of(rewrite(run_dir, rows, accuracy_only=[alone_row]))
    assert report["kd_gain"]["outcome"] == "helped" and report["kd_gain"]["teacher_note"] is None
    assert "KD gain: **+7.50 pts** top-1 over the same student trained alone; it closes 67% of the gap" in md
    assert "Paired: beyond noise" in md and "What to try next:" not in md


# --- no gates, no blind recommendation -----------------------------------------------------------

def test_without_gates_an_artifact_far_below_the_teacher_is_not_recommended(tmp_path, capsys):
    run_dir = write_run(tmp_path / "r1", device=False, deferred=False)
    rows = [scored("teacher", "torch", "fp32", 1, 10.0, window(0, 784), 4.0),
            scored("student", "onnxruntime", "fp32", 1, 1.5, window(0, 640))]  # 18 points down
    md, report, html = report_of(rewrite(run_dir, rows))
    assert report["headline"] is None and report["accuracy_budget"] == {"limit": 0.03, "source": "default"}
    assert ("- **Nothing recommended**: no student artifact is within the default accuracy budget of 3 points top-1 "
            "below the teacher (gates.max_accuracy_drop is not set): the closest, student.onnxruntime.fp32, is 18.00 "
            "points down.") in md
    assert "Nothing recommended: no student artifact" in html

    rows.append(scored("student", "openvino", "fp32", 1, 1.2, window(0, 770)))  # 1.75 points down: within 3
    md, report, _ = report_of(rewrite(run_dir, rows))
    assert report["headline"]["recommended"] == "student.openvino.fp32"
    assert "- Accuracy budget: at most 3 points top-1 below the teacher (the default, as gates.max_accuracy_drop " \
           "is not set)" in md


def test_gates_fail_when_no_artifact_is_within_the_accuracy_budget(tmp_path):
    """A gate judged on nothing does not pass: with no recommendation every configured gate fails."""
    run_dir = write_run(tmp_path / "r1", device=False, deferred=False, gates={"min_speedup": 2.0})
    rows = [scored("teacher", "torch", "fp32", 1, 10.0, window(0, 784), 4.0),
            scored("student", "onnxruntime", "fp32", 1, 1.5, window(0, 640))]  # 18 points down
    _, report, _ = report_of(rewrite(run_dir, rows))
    assert report["headline"] is None and report["gates_passed"] is False
    (gate,) = report["gates"]
    assert gate["gate"] == "min_speedup" and gate["passed"] is False
    assert gate["detail"] == "no student artifact is within the accuracy budget (3 pts top-1): nothing to judge"


def test_with_an_accuracy_gate_and_every_student_below_it_the_summary_says_none_is_within(tmp_path, capsys):
    """Every student is a candidate then (the gate needs an artifact to fail on): the fastest is named as what it is."""
    run_dir = write_run(tmp_path / "r1", device=False, deferred=False, gates={"max_accuracy_drop": 0.03})
    rows = [scored("teacher", "torch", "fp32", 1, 10.0, window(0, 784), 4.0),
            scored("student", "onnxruntime", "fp32", 1, 1.5, window(0, 754)),  # 3.75 points down
            scored("student", "openvino", "fp32", 1, 1.2, window(0, 754))]
    md, report, html = report_of(rewrite(run_dir, rows))
    assert report["headline"]["recommended"] == "student.openvino.fp32"
    assert report["gates"][0]["gate"] == "max_accuracy_drop" and report["gates"][0]["passed"] is False
    sentence = ("No student artifact is within the accuracy budget (3 points top-1 below the teacher); the fastest at "
                "batch 1 is student.openvino.fp32, 3.75 points below the teacher: gates.max_accuracy_drop fails on it")
    assert main(["report", str(run_dir)]) == 0
    assert sentence in capsys.readouterr().out  # and the console, in the same words
    summary = md.split("## Summary")[1].split("## Gates")[0]
    assert sentence in re.sub(r"\*\*(\S+)\*\* \(`[^`]*`\)", r"\1", summary)
    assert "**student.openvino.fp32** (`stages/x/student.openvino.fp32`)" in summary
    assert sentence in re.sub(r"<strong>(\S+)</strong> <code>[^<]*</code>", r"\1", html)
    for text in (md, html):
        assert "Recommended artifact" not in text and "within the accuracy budget)" not in text
    assert report["headline"]["within_budget"] is False


# --- the split each number comes from ------------------------------------------------------------

def test_the_report_says_which_split_each_top1_comes_from(tmp_path):
    run_dir = write_run(tmp_path / "r1", device=False, deferred=False)
    rows = [scored("teacher", "torch", "fp32", 1, 10.0, window(0, 784), 4.0),
            scored("student", "onnxruntime", "fp32", 1, 1.5, window(0, 779))]
    md, report, _ = report_of(rewrite(run_dir, rows, split="test"))
    assert report["accuracy"]["split"] == "test"
    assert "is on the held-out test split (800 samples), which neither trained a model nor chose an epoch" in md
    assert "accuracy on 800 held-out test samples" in md

    md, _, _ = report_of(rewrite(run_dir, rows, split="val"))
    assert "Every top-1 is on the validation split (800 samples), the same split that chose each model's best epoch" \
        in md and "set data.test_fraction (or data.test_path)" in md


def test_test_fraction_holds_out_a_stratified_test_split_normalised_like_train():
    cfg = DataConfig(source="digits", val_fraction=0.2, test_fraction=0.2)
    data = load_dataset(cfg, seed=0)
    total = len(data.y_train) + len(data.y_val) + len(data.y_test)
    assert total == 1797 and abs(len(data.y_test) - 0.2 * total) <= 1 and abs(len(data.y_val) - 0.2 * total) <= 1
    assert data.scored_split()[0] == "test"
    assert set(np.bincount(data.y_test)) <= {35, 36, 37}  # stratified: every class about a tenth
    raw = load_dataset(cfg.model_copy(update={"normalize": False}), seed=0)
    mean = raw.x_train.mean(axis=(0, 2, 3))
    std = raw.x_train.std(axis=(0, 2, 3)) + 1e-6
    assert np.allclose(data.x_test, (raw.x_test - mean[None, :, None, None]) / std[None, :, None, None], atol=1e-5)
    # No sample of the test split is in train or val.
    rows = {x.tobytes() for x in raw.x_test}
    assert not rows & {x.tobytes() for x in raw.x_train} and not rows & {x.tobytes() for x in raw.x_val}
    plain = load_dataset(DataConfig(source="digits"), seed=0)
    assert plain.x_test is None and plain.scored_split()[0] == "val"


def test_test_path_reads_a_separate_test_set_and_bad_test_options_are_one_line(tmp_path, write_pipeline, tiny_config,
                                                                              capsys):
    rng = np.random.default_rng(0)
    for name, count in (("train.npz", 60), ("test.npz", 20)):
        np.savez(tmp_path / name, x=rng.random((count, 8, 8), dtype=np.float32), y=np.arange(count) % 3)
    data = load_dataset(DataConfig(source="npz", path=tmp_path / "train.npz", test_path=tmp_path / "test.npz"), 0)
    assert len(data.y_test) == 20 and len(data.y_train) + len(data.y_val) == 60

    tiny_config["data"] = {"source": "digits", "test_path": "test.npz"}
    assert main(["validate", str(write_pipeline(tiny_config))]) == 2
    err = capsys.readouterr().err
    assert ("data: test_path needs a source with files (npz, imagefolder, manifest, hf, webdataset, text, corpus, coco, yolo); for 'digits' "
            "use test_fraction") in err
    tiny_config["data"] = {"source": "npz", "path": "train.npz", "test_path": "nothere.npz"}
    assert main(["validate", str(write_pipeline(tiny_config))]) == 2
    assert "data.test_path: file not found" in capsys.readouterr().err
    tiny_config["data"] = {"source": "digits", "test_fraction": 0.5, "val_fraction": 0.45}
    assert main(["validate", str(write_pipeline(tiny_config))]) == 2
    assert "leave under 10% of the data to train on" in capsys.readouterr().err


def test_recommend_from_baseline_needs_a_baseline_stage(write_pipeline, tiny_config, capsys):
    tiny_config["stages"]["export"] = {"recommend_from": ["distill", "baseline"]}
    assert main(["validate", str(write_pipeline(tiny_config))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("stages.export.recommend_from: lists baseline, but the pipeline trains no student alone: add "
                        "`baseline: {}` to stages") and "\n" not in err


def test_a_run_with_a_test_split_ships_the_student_alone_and_scores_every_artifact_on_test(
        tiny_config, write_pipeline, tmp_path):
    tiny_config["data"]["test_fraction"] = 0.2
    tiny_config["stages"]["baseline"] = {}
    tiny_config["stages"]["export"] = {"recommend_from": ["distill", "baseline"]}
    run_dir = tmp_path / "run"
    assert main(["--quiet", "run", str(write_pipeline(tiny_config)), "--run-dir", str(run_dir)]) == 0
    results = read_json(run_dir / "stages" / "benchmark" / "results.json")
    assert results["accuracy_split"] == "test" and results["val_samples"] == 360
    labels = results["labels"].split()
    assert len(labels) == 360 and results["accuracy_only"] == []  # the student alone is a timed artifact here
    models = {(r["model"], r["backend"]) for r in results["rows"]}
    assert {("baseline", "torch"), ("baseline", "onnxruntime"), ("student", "onnxruntime")} <= models
    for r in results["rows"]:  # each row's predictions give back its top-1
        predicted = r["predictions"].split()
        assert len(predicted) == 360
        assert sum(p == y for p, y in zip(predicted, labels)) / 360 == pytest.approx(r["accuracy"]["top1"])
    assert len((run_dir / "stages" / "benchmark" / "results.json").read_text().splitlines()) < 1500
    outputs = read_json(run_dir / "run.json")["stages"]
    assert outputs["export"]["outputs"]["baseline_onnx"] == "stages/export/baseline.onnx"
    assert outputs["distill"]["outputs"]["test_top1"] == pytest.approx(
        next(r for r in results["rows"] if r["model"] == "student")["accuracy"]["top1"])
    report = read_json(run_dir / "report.json")
    assert report["accuracy"]["split"] == "test" and report["kd_gain"]["split"] == "test"
    assert report["kd_gain"]["kd_vs_alone"]["n"] == 360 and "predictions" not in report["rows"][0]

    # Without recommend_from the student alone is not shipped, but still scored on the same test images.
    tiny_config["stages"]["export"] = {}
    assert main(["--quiet", "run", str(write_pipeline(tiny_config)), "--run-dir", str(run_dir)]) == 0
    results = read_json(run_dir / "stages" / "benchmark" / "results.json")
    assert {r["model"] for r in results["rows"]} == {"teacher", "student"}
    [alone] = results["accuracy_only"]
    assert alone["model"] == "baseline" and len(alone["predictions"].split()) == 360
    assert read_json(run_dir / "report.json")["kd_gain"]["kd_vs_alone"]["n"] == 360


# --- small things a reader notices ---------------------------------------------------------------

def test_an_int8_file_larger_than_its_fp32_carries_a_note(tmp_path):
    run_dir = write_run(tmp_path / "r1", gates={"max_accuracy_drop": 0.03}, device=False, deferred=False)
    rows = [scored("teacher", "torch", "fp32", 1, 10.0, window(0, 784), 4.0),
            scored("student", "onnxruntime", "fp32", 1, 1.5, window(0, 779), 0.40),
            scored("student", "onnxruntime", "int8", 1, 1.2, window(0, 777), 0.52)]
    md, report, html = report_of(rewrite(run_dir, rows))
    pair = report["int8_vs_fp32"][0]
    assert pair["size_note"] and pair["paired"]["b_only"] == 2
    assert "| 0.400 → 0.520 ⚠ |" in md
    assert "- ⚠ student.onnxruntime.int8: the int8 file is larger than its fp32" in md
    assert "0.400 &rarr; 0.520 &#9888;" in html

    rows[2] = scored("student", "onnxruntime", "int8", 1, 1.2, window(0, 777), 0.12)
    md, report, _ = report_of(rewrite(run_dir, rows))
    assert report["int8_vs_fp32"][0]["size_note"] is None and "larger than its fp32" not in md


def test_labels_on_the_latency_vs_accuracy_chart_never_overlap(tmp_path):
    """Eight artifacts a few microseconds and a few images apart: the case that piled labels up."""
    run_dir = write_run(tmp_path / "r1", device=False, deferred=False)
    rows = [scored("teacher", "torch", "fp32", 1, 10.0, window(0, 784), 4.0)]
    engines = [("student", "onnxruntime", "fp32"), ("student", "onnxruntime", "int8"), ("student", "openvino", "fp32"),
               ("student", "openvino", "fp16"), ("student", "openvino", "int8"), ("student", "torch", "fp32"),
               ("baseline", "onnxruntime", "fp32"), ("baseline", "openvino", "int8")]
    for i, (model, backend, precision) in enumerate(engines):
        rows.append(scored(model, backend, precision, 1, 1.0 + 0.03 * i, window(0, 770 + i % 3)))
    report = report_of(rewrite(run_dir, rows))[1]
    figure = tradeoff_figure(report)
    renderer = figure.canvas.get_renderer()
    ax = figure.axes[0]
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == len(rows)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1), (a, b)
    legend = ax.get_legend().get_window_extent(renderer)
    assert all(not (b.x0 < legend.x1 and legend.x0 < b.x1 and b.y0 < legend.y1 and legend.y0 < b.y1) for b in boxes)
