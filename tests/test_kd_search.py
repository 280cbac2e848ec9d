"""The patient KD recipe and the budgeted Optuna search: trials, pruning, budget, resume after a kill, bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from compress.cli import main
from compress.core.fileio import read_json
from compress.data.transforms import batch_mixer
from compress.distill.search import SearchConfig, TrialResult, duration_seconds, kd_space, run_search


def run(path: Path, run_dir: Path) -> int:
    return main(["--quiet", "run", str(path), "--run-dir", str(run_dir)])


def stage_outputs(run_dir: Path) -> dict:
    return {name: entry["outputs"] for name, entry in read_json(run_dir / "run.json")["stages"].items()}


def quiet(_: str) -> None:
    pass


class Trainer:
    """A trial whose val top-1 after epoch e is a known function of its settings: what the search must find.

    Real epochs are not needed to test the search's bookkeeping; the pipeline tests below train for real.
    `kill_after` raises KeyboardInterrupt inside that many epochs of the run (a kill mid-trial).
    """

    def __init__(self, epochs: int = 4, epoch_seconds: float = 0.0, kill_after: int | None = None):
        self.epochs, self.epoch_seconds, self.kill_after = epochs, epoch_seconds, kill_after
        self.calls: list[tuple[dict, list[int]]] = []
        self.epochs_run = 0

    @staticmethod
    def score(params: dict, epoch: int) -> float:
        best_lr = 0.01
        quality = 1 - abs(params["lr"] - best_lr) / best_lr / 10 - (0.2 if params["loss"] == "dist" else 0)
        return max(0.0, quality) * epoch / (epoch + 1)

    def __call__(self, params: dict, work: Path, on_epoch) -> TrialResult:
        work.mkdir(parents=True, exist_ok=True)
        metrics = work / "metrics.jsonl"
        done = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        start = len(done)
        epochs: list[int] = []
        self.calls.append((params, epochs))
        best, last = max([r["val_top1"] for r in done], default=0.0), start
        for epoch in range(start + 1, self.epochs + 1):
            if self.kill_after is not None and self.epochs_run == self.kill_after:
                raise KeyboardInterrupt
            time.sleep(self.epoch_seconds)
            value = self.score(params, epoch)
            with open(metrics, "a") as fh:
                fh.write(json.dumps({"epoch": epoch, "val_top1": value}) + "\n")
            (work / "last.pt").write_text(str(epoch))  # what fit leaves behind to resume from
            epochs.append(epoch)
            self.epochs_run += 1
            best, last = max(best, value), epoch
            if on_epoch(epoch, value):
                break
        return TrialResult(best, last)


def search_config(**changes) -> SearchConfig:
    return SearchConfig(**{"trials": 8, "budget": "10m", "losses": ["kd", "dist"], "min_epochs": 1, **changes})


def test_the_search_runs_every_trial_prunes_weak_ones_and_chooses_the_best_on_val(tmp_path):
    cfg = search_config()
    trainer = Trainer()
    record = run_search(cfg, kd_space(cfg, 0.01), trainer, tmp_path, seed=0, epochs=4, log=quiet)
    trials = record["trials"]
    assert len(trials) == record["trials_run"] == 8 == len(trainer.calls)
    assert {t["state"] for t in trials} <= {"complete", "pruned"} and any(t["state"] == "pruned" for t in trials)
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert all(t["epochs"] < 4 for t in pruned)  # stopped early: that is the point of successive halving
    complete = [t for t in trials if t["state"] == "complete"]
    assert record["chosen"]["val_top1"] == max(t["val_top1"] for t in complete)
    assert record["chosen"]["params"] == next(t["params"] for t in complete if t["number"] == record["chosen"]["number"])
    for t in complete:  # every value is the trial's own best epoch, as the trainer scored it
        assert t["val_top1"] == pytest.approx(Trainer.score(t["params"], 4))
    assert record["chosen_on"] == "val" and Path(tmp_path / record["chosen_folder"]).is_dir()


def test_the_same_seed_proposes_the_same_trials(tmp_path):
    cfg = search_config(trials=4)
    first = run_search(cfg, kd_space(cfg, 0.01), Trainer(), tmp_path / "a", seed=3, epochs=4, log=quiet)
    second = run_search(cfg, kd_space(cfg, 0.01), Trainer(), tmp_path / "b", seed=3, epochs=4, log=quiet)
    other = run_search(cfg, kd_space(cfg, 0.01), Trainer(), tmp_path / "c", seed=4, epochs=4, log=quiet)
    params = [[t["params"] for t in r["trials"]] for r in (first, second, other)]
    assert params[0] == params[1] != params[2]


def test_a_killed_search_resumes_without_repeating_finished_trials(tmp_path):
    cfg = search_config(trials=5)
    killer = Trainer(kill_after=6)  # dies inside a trial, after six epochs in all
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, kd_space(cfg, 0.01), killer, tmp_path, seed=0, epochs=4, log=quiet)
    finished = [params for params, epochs in killer.calls[:-1]]
    interrupted, done_epochs = killer.calls[-1]

    resumed = Trainer()
    logs: list[str] = []
    record = run_search(cfg, kd_space(cfg, 0.01), resumed, tmp_path, seed=0, epochs=4, log=logs.append)
    again = [params for params, _ in resumed.calls]
    assert again[0] == interrupted  # the interrupted settings first, resumed from its folder ...
    assert resumed.calls[0][1][0] == (done_epochs[-1] + 1 if done_epochs else 1)  # ... after its last epoch
    assert not any(params in finished for params in again[1:])  # no finished trial runs again
    states = [t["state"] for t in record["trials"]]
    assert states.count("interrupted") == 1 and record["trials_run"] == 5
    assert any("interrupted" in line and "resumes" in line for line in logs)
    assert next(t for t in record["trials"] if t["state"] != "interrupted" and t["params"] == interrupted)["resumes"] \
        == next(t["number"] for t in record["trials"] if t["state"] == "interrupted")


def test_the_budget_stops_the_search_before_it_is_passed(tmp_path):
    """No trial starts and no epoch begins that would pass the budget (by the epochs' own measured time)."""
    cfg = search_config(trials=100, budget=1.5, reduction_factor=100)  # no pruning: only the budget stops it
    trainer = Trainer(epochs=4, epoch_seconds=0.1)
    logs: list[str] = []
    record = run_search(cfg, kd_space(cfg, 0.01), trainer, tmp_path, seed=0, epochs=4, log=logs.append)
    assert len(record["trials"]) < 100 and any("budget" in line and "spent" in line for line in logs)
    longest_epoch = max(t["seconds"] / t["epochs"] for t in record["trials"])
    assert record["seconds"] <= 1.5 + longest_epoch
    assert record["seconds"] == pytest.approx(sum(t["seconds"] for t in record["trials"]), abs=0.2)


def test_durations_and_search_fields_are_checked():
    assert duration_seconds("90s") == 90 and duration_seconds("10m") == 600 and duration_seconds("1.5h") == 5400
    assert duration_seconds(30) == 30
    for bad in ("ten minutes", "0s", -5, "5d"):
        with pytest.raises(ValueError):
            duration_seconds(bad)
    with pytest.raises(ValueError, match="alpha"):
        search_config(alpha=(0.5, 1.5))
    with pytest.raises(ValueError):
        search_config(losses=[])
    with pytest.raises(ValueError):
        search_config(temperature=(4, 1))


def test_mixing_keeps_transfer_set_inputs_unlabelled():
    """MixUp/CutMix with NO_LABEL rows: their pixels mix in, their label mass is zero."""
    from compress.config import AugmentConfig

    torch.manual_seed(0)
    mixer = batch_mixer(AugmentConfig(mixup=1.0), num_classes=3)
    x = torch.randn(6, 1, 4, 4)
    labels = torch.tensor([0, 1, 2, -1, -1, 1])
    mixed, soft = mixer(x, labels)
    assert mixed.shape == x.shape and soft.shape == (6, 3)
    assert torch.all(soft.sum(1) <= 1 + 1e-6) and torch.all(soft >= 0)
    assert soft.sum(1)[4] == pytest.approx(0.0, abs=1e-6)  # row 4 mixes with row 3: both unlabelled
    assert soft.sum(1)[0] == pytest.approx(1.0) and soft.sum(1)[3] < 1  # row 3 lends only row 2's label
    assert batch_mixer(None, 3) is None and batch_mixer(AugmentConfig(), 3) is None


def searched_config(tiny_config: dict, **search) -> dict:
    tiny_config["stages"] = {"baseline": {}, "distill": {**tiny_config["stages"]["distill"], "epochs": 2,
                                                        "search": {"trials": 3, "budget": "5m", **search}}}
    return tiny_config


def test_a_searched_pipeline_ships_the_chosen_trial_and_searches_the_baseline_alike(tiny_config, write_pipeline,
                                                                                    tmp_path, capsys):
    config = searched_config(tiny_config)
    run_dir = tmp_path / "run"
    assert run(write_pipeline(config), run_dir) == 0
    outputs = stage_outputs(run_dir)
    distill, baseline = outputs["distill"], outputs["baseline"]
    for stage, keys in ((distill, {"loss", "temperature", "alpha", "lr"}), (baseline, {"lr", "label_smoothing"})):
        search = stage["search"]
        assert len(search["trials"]) == 3 and all(set(t["params"]) == keys for t in search["trials"])
        assert stage["val_top1"] == pytest.approx(search["chosen"]["val_top1"])
        chosen = torch.load(run_dir / "stages" / ("distill" if "loss" in keys else "baseline") / "search"
                            / search["chosen_folder"] / "best.pt", weights_only=True)
        shipped = torch.load(run_dir / stage["checkpoint"], weights_only=True)
        weights = shipped.get("state_dict", shipped)
        assert all(torch.equal(weights[name], value) for name, value in chosen.items())
    # a second run is a cache hit: nothing is searched again
    capsys.readouterr()
    assert main(["run", str(write_pipeline(config)), "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "[distill] cached" in out and "[baseline] cached" in out and "trial" not in out


def test_the_patient_recipe_trains_patience_times_the_epochs_on_mixed_views(tiny_config, write_pipeline, tmp_path,
                                                                              capsys):
    tiny_config["student"] = {"model": "cnn", "kwargs": {"channels": [4, 8]}}
    tiny_config["stages"] = {"baseline": {}, "distill": {**tiny_config["stages"]["distill"], "epochs": 1,
                                                        "recipe": "patient", "patience": 2}}
    run_dir = tmp_path / "run"
    assert main(["run", str(write_pipeline(tiny_config)), "--run-dir", str(run_dir)]) == 0
    log = capsys.readouterr().out
    assert "patient recipe: 2 epochs (1 x patience 2)" in log
    assert "teacher runs on every batch (random augmentation" in log and "objective: 0.7*kd + 0.3*ce" in log
    outputs = stage_outputs(run_dir)
    assert outputs["distill"]["recipe"] == "patient" and outputs["distill"]["epochs"] == 2
    for stage in ("distill", "baseline"):  # the student alone trains as long
        assert len((run_dir / outputs[stage]["metrics"]).read_text().splitlines()) == 2
    assert not (run_dir / "stages" / "distill" / "teacher_cache").exists()


@pytest.mark.parametrize("field, value, named", [
    ("search", {"trials": 3, "budget": "ten minutes"}, "stages.distill.search.budget"),
    ("search", {"trials": 3, "budget": "1m", "losses": ["kd", "nonsense"]}, "stages.distill.search.losses.1"),
    ("search", {"trials": 0, "budget": "1m"}, "stages.distill.search.trials"),
    ("search", {"trials": 3, "budget": "1m", "alpha": [0.2, 1.5]}, "stages.distill.search"),
    ("recipe", "impatient", "stages.distill.recipe"),
    ("patience", 0, "stages.distill.patience"),
])
def test_bad_search_and_recipe_fields_are_one_line_naming_the_field(tiny_config, write_pipeline, tmp_path, capsys,
                                                                    field, value, named):
    tiny_config["stages"]["distill"][field] = value
    run_dir = tmp_path / "run"
    assert run(write_pipeline(tiny_config), run_dir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "pipeline.yaml" in err[0], err
    assert not (run_dir / "stages").exists()  # refused before anything was trained

