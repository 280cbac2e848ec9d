"""Distillation end to end: kill -9 mid-distill then resume, the baseline stage, and 2-process DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compress.core.fileio import read_json

ROOT = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def metric_epochs(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_kill_9_during_distill_resumes_and_finishes_the_run(tiny_config, write_pipeline, tmp_path):
    tiny_config["stages"]["distill"]["epochs"] = 30
    tiny_config["stages"]["baseline"] = {}
    path, run_dir = write_pipeline(tiny_config), tmp_path / "run"
    command = [sys.executable, "-m", "compress", "run", str(path), "--run-dir", str(run_dir)]
    proc = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run_dir / "stages" / "distill" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while len(metric_epochs(metrics)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()  # SIGKILL: no cleanup, the lock dies with the process
    proc.wait()
    killed_at = len(metric_epochs(metrics))
    assert read_json(run_dir / "run.json")["stages"]["distill"]["status"] == "running"

    rerun = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "[baseline] cached" in rerun.stdout and f"[distill] resuming from epoch" in rerun.stdout
    assert metric_epochs(metrics) == list(range(1, 31)) and killed_at >= 2
    stages = read_json(run_dir / "run.json")["stages"]
    assert {entry["status"] for entry in stages.values()} == {"done"}
    for name in ("baseline", "distill"):
        outputs = stages[name]["outputs"]
        assert set(outputs) >= {"checkpoint", "val_top1", "best_epoch", "metrics"}
        assert (run_dir / outputs["checkpoint"]).is_file() and 0.5 < outputs["val_top1"] <= 1
    report = (run_dir / "report.md").read_text()
    gain = (stages["distill"]["outputs"]["val_top1"] - stages["baseline"]["outputs"]["val_top1"]) * 100
    assert "Recommended artifact" in report and f"KD gain: **{gain:+.2f} pts**" in report


@pytest.mark.slow
def test_two_process_gloo_run_trains_together_and_only_rank_0_writes(tiny_config, write_pipeline, tmp_path):
    tiny_config["teacher"]["train"]["epochs"] = 1
    tiny_config["student"] = {"model": "cnn", "kwargs": {"channels": [8, 16]}}
    tiny_config["stages"]["baseline"] = {}
    tiny_config["stages"]["distill"] = {
        "epochs": 2, "batch_size": 64, "lr": 0.01,
        "losses": [{"name": "kd", "weight": 0.9}, {"name": "ce", "weight": 0.1},
                   {"name": "fitnet", "weight": 1.0, "student": "layers.6", "teacher": "layers.6"}]}
    tiny_config["stages"]["benchmark"] = {"batch_sizes": [1], "warmup": 0, "runs": 1, "min_seconds": 0.0}
    path, run_dir = write_pipeline(tiny_config), tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "compress", "run", str(path), "--run-dir", str(run_dir)]
    result = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)
    # The head of stderr holds the failing rank's own message; torchrun's summary follows it.
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[:4000]
    assert result.stdout.count("run dir:") == 1  # rank 1 reports nothing
    stages = read_json(run_dir / "run.json")["stages"]
    assert {entry["status"] for entry in stages.values()} == {"done"}
    for name in ("baseline", "distill"):
        assert metric_epochs(run_dir / "stages" / name / "metrics.jsonl") == [1, 2]  # one writer
    parts = json.loads((run_dir / "stages" / "distill" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"kd", "ce", "fitnet", "lr", "val_top1", "seconds"} <= set(parts)
    assert not list(run_dir.glob("**/.*.tmp"))


@pytest.mark.slow
def test_a_search_under_torchrun_runs_each_trial_on_both_ranks(tiny_config, write_pipeline, tmp_path):
    """Rank 0 holds the study and says what to train; a trial's DDP training needs both ranks to finish."""
    tiny_config["teacher"]["train"]["epochs"] = 1
    tiny_config["stages"] = {"baseline": {"search": False},
                             "distill": {"epochs": 2, "batch_size": 64, "lr": 0.01,
                                         "search": {"trials": 3, "budget": "5m"}}}
    path, run_dir = write_pipeline(tiny_config), tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "compress", "run", str(path), "--run-dir", str(run_dir)]
    result = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[:4000]
    outputs = read_json(run_dir / "run.json")["stages"]["distill"]["outputs"]
    assert len(outputs["search"]["trials"]) == 3 and "search" not in \
        read_json(run_dir / "run.json")["stages"]["baseline"]["outputs"]
    assert len(list((run_dir / "stages" / "distill" / "search").glob("*.journal"))) == 1
    assert len(list((run_dir / "stages" / "distill" / "search" / "trials").iterdir())) == 3


@pytest.mark.slow
def test_kill_9_during_a_search_resumes_it_without_repeating_finished_trials(tiny_config, write_pipeline, tmp_path):
    """SIGKILL inside the third trial: the rerun keeps trials 0 and 1 and finishes the third from its last epoch."""
    tiny_config["stages"] = {"distill": {"epochs": 30, "batch_size": 64, "lr": 0.01,
                                         "search": {"trials": 4, "budget": "10m", "min_epochs": 30}}}
    path, run_dir = write_pipeline(tiny_config), tmp_path / "run"
    command = [sys.executable, "-m", "compress", "run", str(path), "--run-dir", str(run_dir)]
    proc = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trials = run_dir / "stages" / "distill" / "search" / "trials"

    def third_trial_epochs() -> int:
        folders = sorted(trials.iterdir(), key=lambda f: f.stat().st_mtime) if trials.is_dir() else []
        return len(metric_epochs(folders[2] / "metrics.jsonl")) if len(folders) == 3 else 0

    deadline = time.monotonic() + 240
    while third_trial_epochs() < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()
    proc.wait()
    folders = sorted(trials.iterdir(), key=lambda f: f.stat().st_mtime)
    finished = {f.name: metric_epochs(f / "metrics.jsonl") for f in folders[:2]}
    killed_at = len(metric_epochs(folders[2] / "metrics.jsonl"))
    assert all(epochs == list(range(1, 31)) for epochs in finished.values()) and killed_at >= 2

    rerun = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "trial 2 was interrupted; it resumes from its last epoch" in rerun.stdout
    assert "search: trial 0:" not in rerun.stdout and "search: trial 1:" not in rerun.stdout
    assert {f.name: metric_epochs(f / "metrics.jsonl") for f in folders[:2]} == finished  # not trained again
    assert metric_epochs(folders[2] / "metrics.jsonl") == list(range(1, 31))  # resumed, each epoch once
    search = read_json(run_dir / "run.json")["stages"]["distill"]["outputs"]["search"]
    states = [t["state"] for t in search["trials"]]
    assert states.count("interrupted") == 1 and states.count("complete") == 4 and search["trials_run"] == 4
