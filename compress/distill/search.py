"""A budgeted search over a student's training settings with Optuna: TPE proposes, successive halving stops.

Each trial trains the student once (compress.distill.train.fit) with the trial's settings for the
stage's epochs, reporting its val top-1 after every epoch; Optuna's SuccessiveHalvingPruner (ASHA)
stops a trial whose top-1 at a rung (min_epochs, x reduction_factor, ...) is not among the rung's
best. The study is an Optuna journal file in the stage's folder (append-only, whole after a kill):
a rerun loads it, keeps every finished trial and resumes an interrupted one from its last epoch
(each trial trains in a folder named by its settings, where fit resumes). The sampler is seeded by
the pipeline's seed and the number of trials already run, so a run and a resumed run are
reproducible and never propose the first trials again. The time budget counts the wall seconds of
every trial, across reruns; no trial starts, and no epoch begins, that would pass it.

The search chooses on the validation split only: the winner's test top-1, where there is a test
split, is measured afterwards by the stage and the benchmark, never looked at here. Under torchrun
the trials run one after another on all ranks (rank 0 holds the study and says what to train).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import Field, field_validator, model_validator

from compress.config import Strict
from compress.reporting.collect import read_metrics

# The logit losses a KD search tries by default: Hinton's KD, decoupled KD, logit standardisation, DIST.
SEARCH_LOSSES = ["kd", "dkd", "lskd", "dist"]
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")
UNITS = {"s": 1, "m": 60, "h": 3600, None: 1}
JOURNAL = "study.journal"


def duration_seconds(value: float | int | str) -> float:
    """600, "600s", "10m", "1.5h" -> seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration: give seconds (600) or 600s, 10m, 1.5h")
        seconds = float(match.group(1)) * UNITS[match.group(2)]
    if not seconds > 0:
        raise ValueError("must be more than 0 seconds")
    return seconds


class SearchConfig(Strict):
    """`stages.distill.search`: how many trials, in how much wall time, over which settings."""

    trials: int = Field(ge=1, le=1000, description="how many settings to try (fewer when the budget runs out)")
    budget: float | str = Field(description="wall time of all trials together: seconds, or 90s, 30m, 2h")
    losses: list[str] = Field(default_factory=lambda: list(SEARCH_LOSSES),
                              description="the KD loss families to try, each beside ce")
    temperature: tuple[float, float] = Field((1.0, 8.0), description="range of the KD temperature (log scale)")
    alpha: tuple[float, float] = Field((0.5, 1.0), description="range of the KD loss's weight; 1 - alpha weighs ce")
    lr: tuple[float, float] | None = Field(None, description="learning-rate range (log scale); "
                                                             "default: the stage's lr / 10 to lr x 3")
    min_epochs: int | None = Field(None, ge=1, description="successive halving: the first rung, in epochs "
                                                           "(default: a quarter of the stage's epochs)")
    reduction_factor: int = Field(3, ge=2, description="successive halving: 1 in this many trials goes on at a rung")

    @field_validator("budget")
    @classmethod
    def _budget(cls, value):
        duration_seconds(value)
        return value

    @field_validator("losses")
    @classmethod
    def _some_losses(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one loss family")
        return value

    @field_validator("temperature", "alpha", "lr")
    @classmethod
    def _range(cls, value):
        if value is not None and not 0 < value[0] <= value[1]:
            raise ValueError(f"must be [low, high] with 0 < low <= high, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _alpha_is_a_weight(self) -> "SearchConfig":
        if self.alpha[1] > 1:
            raise ValueError(f"alpha: a weight between 0 and 1, got {list(self.alpha)}")
        return self

    @property
    def budget_seconds(self) -> float:
        return duration_seconds(self.budget)

    def lr_range(self, lr: float) -> tuple[float, float]:
        return tuple(self.lr) if self.lr is not None else (lr / 10, lr * 3)


def kd_space(cfg: SearchConfig, lr: float) -> Callable[[Any], dict[str, Any]]:
    """The distill stage's space: loss family, temperature, alpha and learning rate."""
    low, high = cfg.lr_range(lr)

    def suggest(trial) -> dict[str, Any]:
        return {"loss": trial.suggest_categorical("loss", cfg.losses),
                "temperature": trial.suggest_float("temperature", *cfg.temperature, log=True),
                "alpha": trial.suggest_float("alpha", *cfg.alpha),
                "lr": trial.suggest_float("lr", low, high, log=True)}

    return suggest


def alone_space(cfg: SearchConfig, lr: float) -> Callable[[Any], dict[str, Any]]:
    """The student alone's space, given the same trials and budget: learning rate and label smoothing."""
    low, high = cfg.lr_range(lr)

    def suggest(trial) -> dict[str, Any]:
        return {"lr": trial.suggest_float("lr", low, high, log=True),
                "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2)}

    return suggest


def settings_folder(params: dict[str, Any]) -> str:
    """The folder a trial trains in, named by its settings: a resumed trial finds its own last.pt."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class TrialResult:
    val_top1: float  # best over its epochs
    epochs: int      # trained (fewer when stopped)


# train(params, folder, on_epoch) -> its result; on_epoch(epoch, val_top1) -> True to stop the training
TrainTrial = Callable[[dict[str, Any], Path, Callable[[int, float], bool]], TrialResult]


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def first_rung(cfg: SearchConfig, epochs: int) -> int:
    """A quarter of the epochs: after one epoch the val top-1 of a small data set says little about the end."""
    return cfg.min_epochs or max(1, epochs // 4)


def open_study(folder: Path, cfg: SearchConfig, seed: int, epochs: int):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    quiet_optuna()
    folder.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(folder / JOURNAL)))
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=first_rung(cfg, epochs),
                                                    reduction_factor=cfg.reduction_factor)
    study = optuna.create_study(study_name="search", storage=storage, load_if_exists=True, direction="maximize",
                                pruner=pruner)
    # Seeded by the trials so far: a resumed search does not propose its first settings again.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    return study


def requeue_interrupted(study, log: Callable[[str], None]) -> None:
    """Trials left RUNNING by a killed run: failed, and their settings asked again (their folder resumes them)."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"resumes": trial.number}, skip_if_exists=False)
        log(f"search: trial {trial.number} was interrupted; it resumes from its last epoch")


def spent_seconds(study) -> float:
    return sum(float(t.user_attrs.get("seconds", 0.0)) for t in study.trials)


def run_search(cfg: SearchConfig, suggest: Callable[[Any], dict[str, Any]], train: TrainTrial, folder: Path,
               seed: int, epochs: int, log: Callable[[str], None] = print, what: str = "search") -> dict[str, Any]:
    """Run the trials (rank 0 asks Optuna, every rank trains); the search's record for the stage's outputs."""
    import torch.distributed as dist

    distributed = dist.is_initialized() and dist.get_world_size() > 1
    main = not distributed or dist.get_rank() == 0
    study = open_study(folder, cfg, seed, epochs) if main else None
    if main:
        requeue_interrupted(study, log)
    budget = cfg.budget_seconds
    while True:
        trial, order = None, [None]
        if main:
            trial, params = next_trial(study, cfg, suggest, budget, log, what)
            order = [params]
        if distributed:
            dist.broadcast_object_list(order, src=0)
        if order[0] is None:
            break
        run_trial(trial, order[0], train, folder, budget, spent_seconds(study) if main else 0.0, epochs, log, what)
    return search_record(study, cfg, epochs, what) if main else {}


def next_trial(study, cfg: SearchConfig, suggest, budget: float, log, what: str):
    """(the asked trial, its settings) to run next, or (None, None) when the trials or the budget are spent."""
    from optuna.trial import TrialState

    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    spent = spent_seconds(study)
    if len(done) >= cfg.trials:
        return None, None
    epoch_seconds = [t.user_attrs["seconds"] / t.user_attrs["epochs"] for t in done if t.user_attrs.get("epochs")]
    one_epoch = sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else 0.0
    if spent + one_epoch > budget:
        log(f"{what}: the budget ({budget:.0f}s) is spent after {len(done)} of {cfg.trials} trials ({spent:.0f}s)")
        return None, None
    trial = study.ask()
    return trial, suggest(trial)


def run_trial(trial, params: dict[str, Any], train: TrainTrial, folder: Path, budget: float, spent_before: float,
              epochs: int, log: Callable[[str], None], what: str) -> None:
    """Train one trial; on rank 0 report each epoch to Optuna, stop it when pruned or out of time, tell the result."""
    from optuna.trial import TrialState

    work = folder / "trials" / settings_folder(params)
    started = time.monotonic()
    stopped: list[str] = []
    number = trial.number if trial is not None else -1
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())
    log(f"{what}: trial {number}: {shown}")
    if trial is not None:
        trial.set_user_attr("folder", work.name)
        for epoch, value in earlier_epochs(work):  # a resumed trial's epochs before the kill
            trial.report(value, epoch)

    trained: list[int] = []

    def on_epoch(epoch: int, val_top1: float) -> bool:
        elapsed = time.monotonic() - started
        trained.append(epoch)
        trial.set_user_attr("seconds", round(elapsed, 3))  # a kill keeps what this trial cost
        trial.report(val_top1, epoch)
        if epoch >= epochs:  # trained to the end: nothing left to save by pruning it
            return False
        if trial.should_prune():
            stopped.append("pruned")
            return True
        if spent_before + elapsed * (1 + 1 / len(trained)) > budget:  # the next epoch would pass the budget
            stopped.append("budget")
            return True
        return False

    result = train(params, work, on_epoch)
    if trial is None:
        return
    seconds = round(time.monotonic() - started, 3)
    trial.set_user_attr("seconds", seconds)
    trial.set_user_attr("epochs", result.epochs)
    if stopped:
        trial.set_user_attr("stopped", stopped[0])
    trial.set_user_attr("best_val_top1", result.val_top1)  # a pruned trial's value is its last epoch's, not its best
    state = TrialState.PRUNED if stopped and stopped[0] == "pruned" else TrialState.COMPLETE
    trial.study.tell(trial, result.val_top1 if state == TrialState.COMPLETE else None, state=state)
    log(f"{what}: trial {number}: val top-1 {result.val_top1:.4f} after {result.epochs} epochs"
        + (f" (stopped: {stopped[0]})" if stopped else "") + f", {seconds:.0f}s")


def earlier_epochs(work: Path) -> list[tuple[int, float]]:
    """(epoch, val top-1) that fit recorded in a trial's folder before a kill."""
    metrics = work / "metrics.jsonl"
    if not (work / "last.pt").is_file() or not metrics.is_file():
        return []
    return [(r["epoch"], r["val_top1"]) for r in read_metrics(metrics)]


def search_record(study, cfg: SearchConfig, epochs: int, what: str) -> dict[str, Any]:
    """Every trial (settings, val top-1, state, epochs, seconds) and the chosen one, as the stage outputs them."""
    from optuna.trial import TrialState

    trials = []
    for t in study.trials:
        if t.state == TrialState.RUNNING:
            continue
        state = ("interrupted" if t.user_attrs.get("interrupted") else "failed") if t.state == TrialState.FAIL \
            else "pruned" if t.state == TrialState.PRUNED else \
            ("stopped by the budget" if t.user_attrs.get("stopped") == "budget" else "complete")
        value = t.value if t.state == TrialState.COMPLETE else t.user_attrs.get("best_val_top1")
        trials.append({"number": t.number, "params": dict(t.params), "state": state,
                       "val_top1": value, "epochs": t.user_attrs.get("epochs"),
                       "seconds": t.user_attrs.get("seconds"), "folder": t.user_attrs.get("folder"),
                       **({"resumes": t.user_attrs["resumes"]} if "resumes" in t.user_attrs else {})})
    complete = [t for t in trials if t["state"] in ("complete", "stopped by the budget") and t["val_top1"] is not None]
    if not complete:
        raise SearchFailed(f"{what}: no trial finished within the budget ({cfg.budget}): raise "
                           "search.budget or lower the epochs")
    chosen = max(complete, key=lambda t: (t["val_top1"], -t["number"]))
    spent = sum(t["seconds"] or 0.0 for t in trials)
    return {"trials": trials, "chosen": {k: chosen[k] for k in ("number", "params", "val_top1", "epochs")},
            "chosen_folder": str(Path("trials") / chosen["folder"]),
            "trials_requested": cfg.trials, "trials_run": sum(t["state"] != "interrupted" for t in trials),
            "budget_seconds": cfg.budget_seconds, "seconds": round(spent, 1),
            "sampler": "Optuna TPE (seeded)",
            "pruner": f"successive halving (ASHA): first rung {first_rung(cfg, epochs)} epoch(s), "
                      f"1 in {cfg.reduction_factor} goes on",
            "chosen_on": "val"}


class SearchFailed(RuntimeError):
    """The budget ran out before any trial finished an epoch."""
