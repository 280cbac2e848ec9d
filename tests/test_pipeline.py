"""End to end: a tiny pipeline from teacher to report, its cache, force, resume and lock."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest
import torch

from compress.cli import main
from compress.core.fileio import DirLock, read_json
from compress.models import ModelSpec, build_model


def run(path: Path, run_dir: Path, *extra: str) -> int:
    return main(["--quiet", "run", str(path), "--run-dir", str(run_dir), *extra])


def statuses(run_dir: Path) -> dict[str, str]:
    return {name: entry["status"] for name, entry in read_json(run_dir / "run.json")["stages"].items()}


def test_tiny_pipeline_end_to_end(tiny_config, write_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    tiny_config["stages"]["benchmark"]["memory"] = True
    tiny_config["gates"] = {"max_memory_mb": 4096}
    path = write_pipeline(tiny_config)
    assert run(path, run_dir) == 0
    assert set(statuses(run_dir).values()) == {"done"}

    results = read_json(run_dir / "stages" / "benchmark" / "results.json")
    combos = {(r["model"], r["backend"], r["batch_size"]) for r in results["rows"]}
    assert combos == {(m, b, n) for m, b in [("teacher", "torch"), ("student", "torch"), ("student", "onnxruntime")]
                      for n in (1, 8)}
    for row in results["rows"]:
        assert row["latency_ms"]["p50"] > 0 and row["throughput_per_s"] > 0
        assert 0.5 < row["accuracy"]["top1"] <= 1 and row["params"] > 0 and row["macs"] > 0 and row["size_mb"] > 0
    student_rows = [r for r in results["rows"] if r["model"] == "student"]
    assert len({r["accuracy"]["top1"] for r in student_rows}) == 1  # torch and ONNX agree on every val sample
    # Memory: each artifact alone in a fresh process, at the largest batch; ONNX Runtime's process has no torch.
    memory = {(r["model"], r["backend"]): r["memory"] for r in results["rows"]}
    assert all(m["batch_size"] == 8 and m["peak_mb"] >= m["runtime_mb"] > 0 for m in memory.values())
    assert [m["torch_imported"] for m in memory.values()] == [True, True, False]
    assert memory[("student", "onnxruntime")]["peak_mb"] < memory[("student", "torch")]["runtime_mb"]

    parity = read_json(run_dir / "stages" / "export" / "parity.json")
    assert parity["passed"] and parity["max_abs_error"] < 1e-3 and parity["top1_agreement"] == 1.0

    report = (run_dir / "report.md").read_text()
    assert "Recommended artifact" in report and "| student | onnxruntime | fp32 | 1 |" in report
    assert "<img" in (run_dir / "report.html").read_text()
    assert read_json(run_dir / "report.json")["headline"]["recommended"] == "student.onnxruntime.fp32"
    assert "| max_memory_mb | 4096.0 |" in report and "- Memory: " in report
    sidecar = read_json(run_dir / "stages" / "build" / "student.onnxruntime.fp32" / "engine.json")
    assert sidecar["backend"] == "onnxruntime" and len(sidecar["source_onnx_sha256"]) == 64
    assert (run_dir / "pipeline.yaml").exists()


def test_rerun_is_cached_and_a_changed_stage_reruns_downstream_only(tiny_config, write_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run(write_pipeline(tiny_config), run_dir) == 0
    first = read_json(run_dir / "run.json")["stages"]

    assert main(["run", str(write_pipeline(tiny_config)), "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert all(f"[{name}] cached" in out for name in first)

    tiny_config["stages"]["distill"]["temperature"] = 2.0
    assert main(["run", str(write_pipeline(tiny_config)), "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    second = read_json(run_dir / "run.json")["stages"]
    assert "[teacher] cached" in out
    assert second["teacher"]["key"] == first["teacher"]["key"]
    for name in ("distill", "export", "build", "benchmark", "report"):
        assert f"[{name}] running" in out and second[name]["key"] != first[name]["key"]


def test_a_stage_whose_nested_artifacts_were_deleted_runs_again(tiny_config, write_pipeline, tmp_path, capsys):
    """The build's engines are listed inside its outputs: a deleted engine folder is not reused as cached."""
    import shutil

    run_dir = tmp_path / "run"
    path = write_pipeline(tiny_config)
    assert run(path, run_dir) == 0
    shutil.rmtree(run_dir / "stages/build/student.onnxruntime.fp32")
    assert main(["run", str(path), "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "[export] cached" in out and "[build] running" in out
    assert (run_dir / "stages/build/student.onnxruntime.fp32/model.onnx").is_file()


def test_force_reruns_from_the_named_stage(tiny_config, write_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    path = write_pipeline(tiny_config)
    assert run(path, run_dir) == 0
    assert main(["run", str(path), "--run-dir", str(run_dir), "--force", "build"]) == 0
    out = capsys.readouterr().out
    assert "[export] cached" in out and "[build] running" in out and "[report] running" in out
    assert main(["run", str(path), "--run-dir", str(run_dir), "--force", "nosuch"]) == 2


class ShiftedWhenExported(torch.nn.Module):
    """A model whose exported graph adds 1e-4 to every logit, as a model with an export-only branch does.

    The gap does not depend on the CPU's kernels (on some CPUs ONNX Runtime and torch agree to the
    bit), so a parity tolerance below it fails everywhere and the default 1e-3 passes everywhere.
    """

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        logits = self.inner(x)
        return logits + 1e-4 if torch.onnx.is_in_onnx_export() else logits


def export_shifted_mlp(in_channels: int, num_classes: int, input_size: int, hidden: list[int]):
    return ShiftedWhenExported(build_model(ModelSpec("mlp", in_channels, num_classes, input_size, {"hidden": hidden})))


def test_a_failed_stage_keeps_finished_ones_and_resumes(tiny_config, write_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    tiny_config["student"] = {"model": "tests.test_pipeline:export_shifted_mlp", "kwargs": {"hidden": [32]}}
    tiny_config["stages"]["export"] = {"atol": 1e-5}  # the exported graph is 1e-4 away: parity cannot pass
    assert run(write_pipeline(tiny_config), run_dir) == 1
    assert "stage export failed: ONNX parity outside tolerance" in capsys.readouterr().err
    state = statuses(run_dir)
    assert state["teacher"] == state["distill"] == "done" and state["export"] == "failed"
    teacher_pt = run_dir / "stages" / "teacher" / "teacher.pt"
    before = teacher_pt.stat().st_mtime_ns

    tiny_config["stages"]["export"] = {}
    assert main(["run", str(write_pipeline(tiny_config)), "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "[teacher] cached" in out and "[distill] cached" in out and "[export] running" in out
    assert teacher_pt.stat().st_mtime_ns == before


def test_a_locked_run_dir_is_refused(tiny_config, write_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = DirLock(run_dir)
    assert lock.acquire()
    try:
        assert run(write_pipeline(tiny_config), run_dir) == 2
        assert "another run" in capsys.readouterr().err
    finally:
        lock.release()


def test_report_is_rebuilt_from_saved_results(tiny_config, write_pipeline, tmp_path):
    run_dir = tmp_path / "run"
    assert run(write_pipeline(tiny_config), run_dir) == 0
    original = (run_dir / "report.md").read_text()
    (run_dir / "report.md").unlink()
    assert main(["--quiet", "report", str(run_dir)]) == 0
    rebuilt = (run_dir / "report.md").read_text()
    # Only the provenance sentence differs: which command wrote the report.
    assert "written by `compress run`" in original and "rebuilt from saved results by `compress report" in rebuilt
    assert rebuilt.replace("rebuilt from saved results by `compress report RUN_DIR`",
                           "written by `compress run` (its report stage)") == original
    assert main(["--quiet", "report", str(tmp_path / "nothing")]) == 2


def test_a_strict_gate_fails_with_exit_3_after_writing_the_report(tiny_config, write_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    tiny_config["gates"] = {"max_size_mb": 1e-6}
    assert run(write_pipeline(tiny_config), run_dir) == 3
    assert "gate failed: max_size_mb" in capsys.readouterr().err
    assert "GATES FAILED**: max_size_mb" in (run_dir / "report.md").read_text()
    assert "Gates failed: max_size_mb" in (run_dir / "report.html").read_text()


# Threads: how many intra-op threads torch uses in each stage; set on a busy machine, never part of a key.

THREADS_SEEN: dict[tuple[str, bool], set[int]] = {}


class NotesThreads(torch.nn.Module):
    """An MLP that notes torch's intra-op threads at every forward, by role and by whether it trains."""

    def __init__(self, inner: torch.nn.Module, role: str):
        super().__init__()
        self.inner, self.role = inner, role

    def forward(self, x):
        THREADS_SEEN.setdefault((self.role, self.training), set()).add(torch.get_num_threads())
        return self.inner(x)


def noting_mlp(in_channels: int, num_classes: int, input_size: int, role: str):
    return NotesThreads(build_model(ModelSpec("mlp", in_channels, num_classes, input_size, {"hidden": [16]})), role)


def test_threads_are_set_per_stage_logged_and_left_out_of_the_keys(tiny_config, write_pipeline, tmp_path, capsys):
    run_dir, before = tmp_path / "run", torch.get_num_threads()
    tiny_config["teacher"] = {"model": "tests.test_pipeline:noting_mlp", "kwargs": {"role": "teacher"},
                              "train": {"epochs": 1, "batch_size": 64}}
    tiny_config["student"] = {"model": "tests.test_pipeline:noting_mlp", "kwargs": {"role": "student"}}
    tiny_config["stages"]["distill"]["epochs"] = 1
    tiny_config["stages"]["baseline"] = {}
    tiny_config["threads"] = 1  # every stage that trains or evaluates ...
    tiny_config["stages"]["distill"]["threads"] = 2  # ... but this one (and baseline, which trains as it does)
    seen = importlib.import_module("tests.test_pipeline").THREADS_SEEN  # the module the factory is imported from
    seen.clear()
    assert main(["run", str(write_pipeline(tiny_config)), "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert seen[("teacher", True)] == {1} and seen[("student", True)] == {2}
    for line in ("[teacher] torch threads: 1 (threads)", "[baseline] torch threads: 2 (stages.distill.threads)",
                 "[distill] torch threads: 2 (stages.distill.threads)", "[export] torch threads: 1 (threads)",
                 f"[benchmark] torch threads: {os.cpu_count()} (all cores: stages.benchmark.threads is unset)"):
        assert line in out, line
    assert "[report] torch threads" not in out  # it reads files, computes nothing
    assert torch.get_num_threads() == before  # put back after each stage
    assert read_json(run_dir / "stages" / "distill" / "stage.json")["status"] == "done"

    del tiny_config["threads"], tiny_config["stages"]["distill"]["threads"]  # as a pipeline written before threads
    tiny_config["teacher"]["train"]["threads"] = 2
    assert main(["run", str(write_pipeline(tiny_config)), "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert all(f"[{name}] cached" in out for name in read_json(run_dir / "run.json")["stages"]), out
