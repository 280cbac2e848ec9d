"""The report of a searched distill stage: every trial, the chosen one, and what the search does to the verdict.

Run dirs are written by hand in the run-dir contract (tests/test_report.py's write_run), with the
search records the distill and baseline stages save in their outputs; nothing is trained.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import yaml
from PIL import Image

from compress.core.fileio import read_json
from compress.reporting.search_trials import configurations, search_section
from tests.test_accuracy_truth import N, predictions, report_of, rewrite, scored, window
from tests.test_report import parse_html, write_run

CHART_ALT = "val top-1 of every search trial"


def trial(number: int, state: str, val_top1: float | None, epochs: int | None, seconds: float | None,
          **params) -> dict:
    return {"number": number, "params": params, "state": state, "val_top1": val_top1, "epochs": epochs,
            "seconds": seconds, "folder": f"trial-{number}"}


def kd_search() -> dict:
    """Six trials of every state; trial 4 was interrupted and resumed as trial 5, so five configurations ran."""
    trials = [trial(0, "complete", 0.955, 20, 61.2, loss="kd", temperature=4.0, alpha=0.9, lr=0.05),
              trial(1, "pruned", 0.901, 5, 15.0, loss="dkd", temperature=2.0, alpha=0.5, lr=0.1),
              trial(2, "complete", 0.962, 20, 60.0, loss="lskd", temperature=1.0, alpha=0.7, lr=0.02),
              trial(3, "stopped by the budget", 0.95, 12, 40.0, loss="dist", temperature=8.0, alpha=0.9, lr=0.05),
              trial(4, "interrupted", None, None, 3.0, loss="kd", temperature=4.0, alpha=0.5, lr=0.01),
              {**trial(5, "complete", 0.958, 20, 58.0, loss="kd", temperature=4.0, alpha=0.5, lr=0.01), "resumes": 4}]
    return {"trials": trials, "chosen": {"number": 2, "params": trials[2]["params"], "val_top1": 0.962, "epochs": 20},
            "chosen_folder": "trials/trial-2", "trials_requested": 8, "trials_run": 5, "budget_seconds": 600.0,
            "seconds": 237.2, "sampler": "Optuna TPE (seeded)",
            "pruner": "successive halving (ASHA): first rung 2 epoch(s), 1 in 3 goes on", "chosen_on": "val"}


def baseline_search() -> dict:
    trials = [trial(0, "complete", 0.925, 20, 50.0, lr=0.05, label_smoothing=0.0),
              trial(1, "complete", 0.93, 20, 51.0, lr=0.1, label_smoothing=0.1),
              trial(2, "pruned", 0.88, 5, 12.0, lr=0.01, label_smoothing=0.2),
              trial(3, "stopped by the budget", 0.91, 9, 22.0, lr=0.02, label_smoothing=0.0)]
    return {**kd_search(), "trials": trials, "chosen": {"number": 1, "params": trials[1]["params"], "val_top1": 0.93,
                                                        "epochs": 20}, "trials_run": 4, "seconds": 135.0}


def searched_run(tmp_path: Path, distill: dict, baseline: dict | None = None, stages: dict | None = None) -> Path:
    """A finished run whose distill (and baseline) outputs carry what the searched stages save."""
    run_dir = write_run(tmp_path / "searched", device=False, deferred=False)
    record = read_json(run_dir / "run.json")
    record["stages"]["distill"]["outputs"].update(distill)
    record["stages"]["baseline"]["outputs"].update(baseline or {})
    (run_dir / "run.json").write_text(json.dumps(record))
    if stages:
        pipeline = yaml.safe_load((run_dir / "pipeline.yaml").read_text())
        (run_dir / "pipeline.yaml").write_text(yaml.safe_dump({**pipeline, "stages": stages}))
    return run_dir


def kd_section(md: str) -> str:
    return md.split("## What distillation bought")[1].split("## Training")[0]


def summary(md: str) -> str:
    return md.split("## Summary")[1].split("## Gates")[0]


def search_chart(html: str) -> Image.Image | None:
    """The trials chart as an image, when the HTML embeds one."""
    marker = f'alt="{CHART_ALT}" src="data:image/png;base64,'
    if marker not in html:
        return None
    data = html.split(marker)[1].split('"')[0]
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_the_trials_table_lists_every_trial_with_its_state_and_marks_the_chosen_one(tmp_path):
    md, report, html = report_of(searched_run(tmp_path, {"search": kd_search(), "epochs": 20, "best_epoch": 17}))
    section = kd_section(md)
    assert "### Search" in section
    assert ("5 of 8 requested trials ran in 237 s of a 600 s budget; sampler: Optuna TPE (seeded); pruner: "
            "successive halving (ASHA): first rung 2 epoch(s), 1 in 3 goes on; the trial was chosen on the validation "
            "split.") in section
    assert "| trial | loss | temperature | alpha | lr | state | epochs | val top-1 | seconds |" in section
    for line in ("| 0 | kd | 4 | 0.9 | 0.05 | complete | 20 | 95.50% | 61.2 |",
                 "| 1 | dkd | 2 | 0.5 | 0.1 | pruned | 5 | 90.10% | 15.0 |",
                 "| **2 (chosen)** | **lskd** | **1** | **0.7** | **0.02** | **complete** | **20** | **96.20%** | **60.0** |",
                 "| 3 | dist | 8 | 0.9 | 0.05 | stopped by the budget | 12 | 95.00% | 40.0 |",
                 "| 4 | kd | 4 | 0.5 | 0.01 | interrupted | - | - | 3.0 |",
                 "| 5 | kd | 4 | 0.5 | 0.01 | complete (resumes 4) | 20 | 95.80% | 58.0 |"):
        assert line in section, line
    assert section.count("(chosen)") == 1
    assert '<tr class="recommended"><td>2 (chosen)</td><td>lskd</td>' in html and 'id="kd-search"' in html
    assert [t["number"] for t in report["kd_gain"]["search"]["kd"]["trials"]] == [0, 1, 2, 3, 4, 5]


def test_the_trials_chart_is_an_embedded_png_beside_the_other_charts(tmp_path):
    run_dir = searched_run(tmp_path, {"search": kd_search()}, {"search": baseline_search()})
    _, _, html = report_of(run_dir)
    chart = search_chart(html)
    assert chart is not None and chart.format == "PNG" and chart.size[0] > 300 and chart.size[1] > 200
    images = parse_html(html).images
    assert len(images) == 5 and all(src.startswith("data:image/png;base64,") for src in images)
    assert html.index('id="kd-search"') < html.index(CHART_ALT) < html.index('id="training"')


def test_with_a_baseline_search_each_side_says_how_many_configurations_it_tried(tmp_path):
    md, report, html = report_of(searched_run(tmp_path, {"search": kd_search()}, {"search": baseline_search()}))
    assert report["kd_gain"]["configurations_tried"] == {"kd": 5, "alone": 4}
    sentence = ("Configurations tried by the search: 5 for the student with KD, 4 for the student alone (each side "
                "the best of its own search).")
    assert sentence in summary(md) and sentence in kd_section(md) and sentence in html
    section = kd_section(md)
    assert "Student alone: 4 of 8 requested trials ran in 135 s of a 600 s budget" in section
    assert "| trial | lr | label smoothing | state | epochs | val top-1 | seconds |" in section
    assert "| **1 (chosen)** | **0.1** | **0.1** | **complete** | **20** | **93.00%** | **51.0** |" in section
    assert "| 2 | 0.01 | 0.2 | pruned | 5 | 88.00% | 12.0 |" in section
    assert "biased" not in md and "biased" not in html


def test_without_a_baseline_search_the_report_says_the_comparison_is_biased(tmp_path):
    run_dir = searched_run(tmp_path, {"search": kd_search()}, stages={"baseline": {"search": False}})
    md, report, html = report_of(run_dir)
    assert report["kd_gain"]["configurations_tried"] == {"kd": 5, "alone": 1}
    bias = ("The comparison is biased toward KD: the best of 5 KD configurations against one run of the student alone "
            "(stages.baseline.search is false). For a fair verdict, give the student alone the same search: remove "
            "stages.baseline.search: false.")
    assert f"**{bias}**" in summary(md) and f"**{bias}**" in kd_section(md)
    assert "Configurations tried by the search: 5 for the student with KD, 1 for the student alone." in md
    assert "Student alone: not searched: one run with its configured settings" in kd_section(md)
    assert f'<div class="finding">{bias}</div>' in html


def test_the_split_note_says_whether_the_search_could_flatter_the_verdict(tmp_path):
    md, _, _ = report_of(searched_run(tmp_path, {"search": kd_search()}))
    assert ("The verdict above is judged on the val split, the split that chose the trial: the chosen trial's val "
            "top-1 (96.20%) is optimistic, the best of 5 tries on the same images.") in kd_section(md)

    run_dir = tmp_path / "searched"
    alone = {"model": "baseline", "artifact": "stages/baseline/student.pt", "backend": "torch", "precision": "fp32",
             "accuracy": {"top1": 700 / N}, "predictions": predictions(window(40, 700))}
    rows = [scored("teacher", "torch", "fp32", 1, 10.0, window(0, 790), 4.0),
            scored("student", "torch", "fp32", 1, 3.0, window(40, 760)),
            scored("student", "onnxruntime", "fp32", 1, 1.5, window(40, 760))]
    md, report, _ = report_of(rewrite(run_dir, rows, accuracy_only=[alone], split="test"))
    assert report["kd_gain"]["split"] == "test"
    assert ("The verdict above is judged on the test split, which chose no trial: the search could not flatter "
            "itself.") in kd_section(md)
    assert "optimistic" not in md


def test_a_last_best_epoch_recommends_more_epochs_whatever_kd_bought(tmp_path):
    idea = ("more epochs (stages.distill.epochs, now 20): the best epoch was 20 of 20, still improving at the end; "
            "or recipe: patient (stages.distill.recipe)")
    stages = {"distill": {"epochs": 20}}
    md, report, html = report_of(searched_run(tmp_path, {"epochs": 20, "best_epoch": 20}, stages=stages))
    assert report["kd_gain"]["outcome"] == "helped" and report["kd_gain"]["still_improving"]
    assert f"What to try next:\n\n- {idea}\n" in kd_section(md) and idea in html
    assert "temperature (stages.distill.temperature" not in md  # KD helped: only the epochs idea is offered

    md, report, _ = report_of(searched_run(tmp_path / "b", {"epochs": 20, "best_epoch": 14}, stages=stages))
    assert not report["kd_gain"]["still_improving"]
    assert "still improving" not in md and "What to try next:" not in md


def test_a_last_best_epoch_is_said_once_when_kd_did_not_help(tmp_path):
    run_dir = searched_run(tmp_path, {"search": kd_search(), "epochs": 20, "best_epoch": 20},
                           {"val_top1": 0.97}, stages={"distill": {"epochs": 20}})
    md, report, _ = report_of(run_dir)
    assert report["kd_gain"]["outcome"] == "lost"
    section = kd_section(md)
    assert section.count("still improving") == 1 and section.count("more epochs") == 1
    # the search chose temperature, alpha and the loss: what is left is a larger search or the patient recipe
    assert "another loss family" not in section and "a larger search (stages.distill.search" in section
    assert "recipe: patient (stages.distill.recipe)" in section


def test_the_patient_recipe_is_named_with_the_epochs_it_trained(tmp_path):
    run_dir = searched_run(tmp_path, {"recipe": "patient", "epochs": 80, "best_epoch": 80},
                           stages={"distill": {"epochs": 20, "recipe": "patient"}})
    md, _, html = report_of(run_dir)
    line = "The student with KD trained with the patient recipe (stages.distill.recipe: patient, 80 epochs)."
    assert line in kd_section(md) and line in html
    assert ("more epochs (stages.distill.epochs, now 20; the student trained 80): the best epoch was 80 of 80, still "
            "improving at the end; or a larger stages.distill.patience") in kd_section(md)


def test_a_report_without_a_search_keeps_its_sections_as_they_were(tmp_path):
    md, report, html = report_of(write_run(tmp_path / "plain", device=False, deferred=False))
    kd = report["kd_gain"]
    assert kd["search"] is None and kd["configurations_tried"] == {"kd": 1, "alone": 1}
    assert kd_section(md) == (
        "\n\n|  | top-1 (val) | 95% CI | Δ top-1 vs teacher | best epoch |\n|---|---:|---:|---:|---:|\n"
        "| teacher | 98.00% | 96.0–99.1% | - | - |\n"
        "| student with KD | 96.00% | 93.6–97.7% | -2.00 pts | 6 |\n"
        "| student alone (baseline) | 93.00% | 89.9–95.3% | -5.00 pts | 5 |\n\n"
        "KD gain: **+3.00 pts** top-1 over the same student trained alone; it closes 60% of the gap to the teacher."
        "\n\n")
    for text in (md, html):
        assert "Search" not in text and "Configurations tried" not in text and "patient" not in text
    assert search_chart(html) is None and len(parse_html(html).images) == 4


def test_a_search_with_no_finished_trial_or_missing_values_renders_with_dashes(tmp_path):
    broken = {"trials": [{"number": 0, "params": {"loss": "kd", "lr": 0.1}, "state": "pruned"},
                         {"number": 1, "state": "failed", "val_top1": None, "epochs": None, "seconds": None},
                         "not a trial"],
              "sampler": "Optuna TPE (seeded)", "chosen_on": "val"}
    md, report, html = report_of(searched_run(tmp_path, {"search": broken}))
    section = kd_section(md)
    assert "2 of - requested trials ran in - s of a - s budget (none finished: no trial could be chosen)" in section
    assert "| 0 | kd | 0.1 | pruned | - | - | - |" in section and "| 1 | - | - | failed | - | - | - |" in section
    assert "(chosen)" not in section and "val top-1 (-) is optimistic" in section
    assert search_chart(html) is None and report["kd_gain"]["configurations_tried"]["kd"] == 2


def test_configurations_count_trials_that_ran_once_each():
    assert configurations(None) == 1
    assert configurations(kd_search()) == 5
    assert configurations({k: v for k, v in kd_search().items() if k != "trials_run"}) == 5  # the resumed one once
    section = search_section({"search": kd_search()}, {}, "val", {})
    assert section["bias"] and section["alone"] is None and section["kd"]["chosen"] == 2
    assert search_section({}, {"search": baseline_search()}, "val", {}) is None  # only KD's search opens the section
