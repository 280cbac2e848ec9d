"""Gather everything a report shows from a run dir's saved files (nothing is rerun).

Sources: pipeline.yaml (gates), run.json (each stage's outputs), benchmark/results.json,
metrics.jsonl of the training stages, and stages/deploy/<target>/results.json from deploys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from compress.config import GatesConfig
from compress.core.errors import UsageError
from compress.core.fileio import read_json

TRAINING_STAGES = ("teacher", "baseline", "distill", "quantize")


@dataclass
class RunFacts:
    run_dir: Path
    name: str
    gates: GatesConfig
    results: dict[str, Any]
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    # The saved pipeline.yaml as plain data, read leniently: the report only names options from it
    # (distill temperature, teacher epochs) when it suggests what to try next.
    pipeline: dict[str, Any] = field(default_factory=dict)


def read_gates(pipeline_yaml: Path) -> tuple[str, GatesConfig]:
    """The run's name and gates from its saved pipeline.yaml (only those fields: the rest may have moved)."""
    if not pipeline_yaml.is_file():
        raise UsageError(f"{pipeline_yaml}: not found (not a run dir?)")
    try:
        raw = yaml.safe_load(pipeline_yaml.read_text()) or {}
    except yaml.YAMLError as error:
        raise UsageError(f"{pipeline_yaml}: not valid YAML: {error}") from None
    try:
        gates = GatesConfig.model_validate(raw.get("gates") or {})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in ("gates", *first["loc"]))
        raise UsageError(f"{pipeline_yaml}: {where}: {first['msg']}") from None
    return str(raw.get("name") or pipeline_yaml.parent.name), gates


def read_pipeline(pipeline_yaml: Path) -> dict[str, Any]:
    """The saved pipeline.yaml as a mapping ({} when it is not one; read_gates has already judged the file)."""
    raw = yaml.safe_load(pipeline_yaml.read_text())
    return raw if isinstance(raw, dict) else {}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Epoch records of a metrics.jsonl; a torn last line (crash mid-write) is skipped."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in records if isinstance(r, dict) and "epoch" in r]


def _metrics_of(run_dir: Path, stage: str, outputs: dict[str, Any]) -> list[dict[str, Any]]:
    relative = outputs.get("metrics")
    path = run_dir / relative if relative else run_dir / "stages" / stage / "metrics.jsonl"
    return read_metrics(path) if path.is_file() else []


def read_devices(run_dir: Path) -> list[dict[str, Any]]:
    devices = []
    for path in sorted((run_dir / "stages" / "deploy").glob("*/results.json")):
        try:
            data = read_json(path)
        except (OSError, json.JSONDecodeError) as error:
            raise UsageError(f"{path}: unreadable device results: {error}") from None
        if not isinstance(data, dict) or not isinstance(data.get("rows", []), list):
            raise UsageError(f"{path}: rows: must be a list of result rows")
        release = {k: data.get(k) for k in ("release", "current", "artifact", "runtime", "deployed_at")}
        devices.append({"target": data.get("target") or path.parent.name, "device": data.get("device") or {},
                        "rows": data.get("rows") or [], "path": str(path.relative_to(run_dir)),
                        "release": release if release["release"] else None})
    return devices


def collect(run_dir: str | Path, outputs: dict[str, dict[str, Any]] | None = None) -> RunFacts:
    """All saved facts of a run; `outputs` overrides run.json (the report stage passes its live ones)."""
    run_dir = Path(run_dir)
    name, gates = read_gates(run_dir / "pipeline.yaml")
    if outputs is None:
        record = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {"stages": {}}
        outputs = {stage: entry.get("outputs") or {} for stage, entry in record.get("stages", {}).items()
                   if entry.get("status") == "done"}
    relative = (outputs.get("benchmark") or {}).get("results") or "stages/benchmark/results.json"
    results_path = run_dir / relative
    if not results_path.is_file():
        raise UsageError(f"{results_path}: not found (run the pipeline's benchmark stage first)")
    try:
        results = read_json(results_path)
    except json.JSONDecodeError as error:
        raise UsageError(f"{results_path}: not valid JSON: {error}") from None
    if not isinstance(results.get("rows"), list):
        raise UsageError(f"{results_path}: rows: missing or not a list")
    if results.get("own_report") or any(not isinstance(row, dict) or not {"model", "batch_size"} <= set(row)
                                        for row in results["rows"]):
        # a task that writes its own report (causal LMs: perplexity and tokens/s rows; detectors: mAP rows, marked
        # own_report) is read by that report; the shared one's rows are one per model and batch size
        raise UsageError(f"{results_path}: rows are of task {results.get('task', 'unknown')}, not the shared report's")
    metrics = {stage: _metrics_of(run_dir, stage, outputs[stage] or {}) for stage in TRAINING_STAGES if stage in outputs}
    return RunFacts(run_dir, name, gates, results, outputs, {k: v for k, v in metrics.items() if v},
                    read_devices(run_dir), read_pipeline(run_dir / "pipeline.yaml"))
