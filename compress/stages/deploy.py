"""deploy (optional): the recommended artifact to every device of `targets`, measured there.

The same steps as `compress deploy RUN_DIR --target ...` (bundle with checksums, upload over SSH
with strict host key checking, verify, build the TensorRT engine on a Jetson, smoke test,
benchmark, atomic switch of `current`), run as the last stage of `compress run`, so one file and
one command go from the teacher to a deployed student. The device results are folded into the
report. A run whose gates failed is not deployed unless `require_gates: false`.

Its folder, stages/deploy, is shared with `compress deploy` (bundles and each device's results),
so the runner keeps it when the stage reruns: device results of earlier releases stay until the
same device is deployed again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import Field

from compress.config import ADDED_LATER, DataConfig, PipelineConfig, Strict
from compress.core.console import Console
from compress.core.errors import CompressError, ConfigError, UsageError
from compress.core.fileio import read_json
from compress.tasks.registry import task_named
from compress.reporting import rewrite_report
from compress.stages.contract import Stage, StageContext
from deploy.bundle import RUNTIMES, ValSample, choose, failed_gates, gates_refusal, read_run
from deploy.fleet import KEEP, deploy_command
from deploy.release import check_slugs
from deploy.runner import harness
from deploy.runner.sessions import OnnxRuntimeSession
from deploy.targets import DeviceError, SshOptions, parse_target
from deploy.targets.ssh import unsafe_path

MAX_SAMPLE_BYTES = 8 << 20


class DeployConfig(Strict):
    targets: list[str] = Field(min_length=1, description="local:/path, ssh://user@host[:port]/path or "
                                                          "jetson://user@host[:port]/path")
    runtime: str | None = Field(None, description="onnxruntime | openvino | tensorrt (default: onnxruntime; "
                                                  "tensorrt for jetson://)")
    artifact: str | None = Field(None, description="model.backend.precision (default: the recommended one)")
    known_hosts: Path | None = Field(None, description="check host keys against this file only")
    identity: Path | None = Field(None, description="ssh private key")
    ssh_config: Path | None = Field(None, description="ssh -F FILE instead of ~/.ssh/config")
    ssh_options: list[str] = Field(default_factory=list, description="ssh -o Key=Value")
    bwlimit: int | None = Field(None, ge=1, description="upload limit in KB/s")
    val_samples: int = Field(256, ge=1, description="labelled val samples shipped for the device's top-1")
    require_gates: bool = Field(True, description="deploy only when every gate passed")
    keep: int = Field(KEEP, ge=1, json_schema_extra=ADDED_LATER, description="releases kept on each device and bundles in stages/deploy/bundles; "
                                               "older ones go after a switch, never the current one nor the previous")

    def resolve_paths(self, base: Path) -> None:
        """Key files are relative to pipeline.yaml, like every other path in it."""
        for name in ("known_hosts", "identity", "ssh_config"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, (base / value).expanduser().resolve())

    def check(self, pipeline: PipelineConfig):
        if self.runtime is not None and self.runtime not in RUNTIMES:
            return "runtime", f"unknown runtime '{self.runtime}'; known: {', '.join(RUNTIMES)}"
        for name in ("known_hosts", "identity", "ssh_config"):
            value = getattr(self, name)
            if value is not None and not value.is_file():
                return name, f"file not found: {value}"
            if value is not None and name != "ssh_config" and unsafe_path(str(value)):
                return name, f"{value}: {unsafe_path(str(value))}"
        for option in self.ssh_options:
            if "=" not in option or option.startswith("-"):
                return "ssh_options", f"'{option}': write it as Key=Value"
        try:
            targets = self.parsed_targets()
            check_slugs(targets)
        except UsageError as error:
            return "targets", str(error).removeprefix("--target ")
        built = {target.split(":")[0] for target in pipeline.stages["build"].targets}
        for target in targets:  # TensorRT engines are built on the device from the ONNX; the others ship built
            runtime = self.runtime or target.default_runtime
            if runtime != "tensorrt" and runtime not in built:
                field = "runtime" if self.runtime else "targets"
                return field, (f"{target.label} runs {runtime}, but no {runtime} engine is built: "
                               f"add {runtime}:fp32 to stages.build.targets")
        return None

    def parsed_targets(self) -> list:
        ssh = SshOptions(*(str(v) if v else None for v in (self.known_hosts, self.identity)), list(self.ssh_options),
                         str(self.ssh_config) if self.ssh_config else None)
        return [parse_target(spec, ssh) for spec in self.targets]


def make_val_sample(run_dir: Path, onnx_path: Path, limit: int) -> ValSample:
    """A seeded slice of the run's val split (already preprocessed) with the host's fp32 predictions.

    Read from the run's own resolved pipeline.yaml; only its data section (and task) is needed, no model code.
    What a sample holds is the task's (pixels; token ids made by the tokenizer.json the bundle ships).
    """
    pipeline = yaml.safe_load((run_dir / "pipeline.yaml").read_text())
    seed = pipeline.get("seed", 0)
    task = task_named(pipeline.get("task"), DataConfig.model_validate(pipeline["data"]))
    data = task.load_data(seed)
    count = max(1, min(limit, len(data.val), MAX_SAMPLE_BYTES // task.sample_bytes(data)))
    order = np.random.default_rng(seed).permutation(len(data.val))
    with OnnxRuntimeSession(onnx_path, providers=["CPUExecutionProvider"]) as session:
        arrays, x, y = task.device_sample(run_dir, data, order, count, session.input_names)
        host_top1 = harness.predict(session.infer, x).argmax(1)
    return ValSample({**arrays, "y": y.astype(np.int64), "host_top1": host_top1.astype(np.int64)},
                     task.preprocessing(data), list(data.class_names), task.name)


def refresh_report(run_dir: Path) -> None:
    """Fold the device results into the run's report (when the run has a benchmark to report)."""
    if (run_dir / "stages" / "benchmark" / "results.json").is_file():
        try:
            rewrite_report(run_dir, written_by="deploy")
        except CompressError as error:
            Console.error(str(error))


class StageConsole:
    """The deploy command's console, speaking through the stage's log."""

    def __init__(self, log):
        self.log = log

    def __call__(self, message: str) -> None:
        self.log(message)

    def error(self, message: str) -> None:
        self.log(f"error: {message}")


class DeployStage(Stage):
    name = "deploy"
    Config = DeployConfig
    optional = True
    reads = ("build", "benchmark", "report")
    keeps_dir = True

    @staticmethod
    def command_hooks(run_dir: Path) -> tuple[Any, Any, Any]:
        """What `compress deploy` hands the deploy package for a run of this stage's tasks: (the val sample maker,
        the report refresher, the packer of its bundles: None, a classifier's)."""
        return make_val_sample, refresh_report, None

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg: DeployConfig = ctx.config
        report = ctx.outputs.get("report") or {}
        failed = failed_gates(report)
        if cfg.require_gates and failed:
            ctx.log(gates_refusal(failed, "stages.deploy.require_gates: false"))
            return {"deployed": [], "skipped": f"gates failed: {', '.join(failed)}"}
        targets = cfg.parsed_targets()
        record = read_run(ctx.run_dir)
        for target in targets:  # an unknown artifact or runtime is a config error, before any device is touched
            try:
                choose(ctx.run_dir, record, cfg.runtime, cfg.artifact, target.default_runtime)
            except UsageError as error:
                field = "artifact" if cfg.artifact else "runtime"
                raise ConfigError(ctx.pipeline.source_file, f"stages.deploy.{field}",
                                  str(error).split(": ", 1)[-1]) from None
        failed = deploy_command(ctx.run_dir, targets, StageConsole(ctx.log), make_val_sample, refresh_report,
                                cfg.runtime, cfg.artifact, cfg.val_samples, cfg.bwlimit, cfg.keep)
        if failed:
            raise DeviceError(f"deploy failed on {len(failed)} of {len(targets)} target(s): {', '.join(failed)}; "
                              "the others are deployed and in the report")
        return {"deployed": [{"target": t.label,
                              "results": ctx.relative(ctx.stage_dir / t.slug / "results.json")} for t in targets]}


def run_deploy_options(run_dir: Path, names) -> tuple[dict[str, Any], Path]:
    """The options `names` that a finished run's deploy section sets (its pipeline.yaml; none without one), and
    that file: what `compress deploy` applies to a task with deploy options of its own (causal LMs, detectors)."""
    path = Path(run_dir) / "pipeline.yaml"
    try:
        section = ((yaml.safe_load(path.read_text()) or {}).get("stages") or {}).get("deploy") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        section = {}
    return {name: section[name] for name in names if section.get(name) is not None}, path


def skipped_by_gates(ctx: StageContext) -> str:
    return f"gates failed: {', '.join(failed_gates(ctx.outputs.get('report') or {}))}"


def deploy_own_bundles(ctx: StageContext, cfg: DeployConfig, packer, keep_report,
                       *choose_args) -> list[tuple[Any, dict, Path]] | None:
    """The deploy of a task with a bundle of its own (causal LMs, detectors): the gates, the artifact checked
    before any device is touched (a config error naming stages.deploy.artifact or runtime), every target through
    deploy_command with `packer`, then (target, its results, their path) per target; None when a failed gate
    stops it (logged). A target that failed raises DeviceError after the others are deployed."""
    failed = failed_gates(ctx.outputs.get("report") or {})
    if cfg.require_gates and failed:
        ctx.log(gates_refusal(failed, "stages.deploy.require_gates: false"))
        return None
    targets = cfg.parsed_targets()
    try:  # an unknown artifact is a config error, before any device is touched
        packer.choose(ctx.run_dir, read_run(ctx.run_dir), cfg.runtime, cfg.artifact, *choose_args)
    except UsageError as error:
        field = "artifact" if cfg.artifact else "runtime"
        raise ConfigError(ctx.pipeline.source_file, f"stages.deploy.{field}", str(error).split(": ", 1)[-1]) from None
    failed = deploy_command(ctx.run_dir, targets, StageConsole(ctx.log), None, keep_report, cfg.runtime, cfg.artifact,
                            bwlimit=cfg.bwlimit, keep=cfg.keep, packer=packer)
    if failed:
        raise DeviceError(f"deploy failed on {len(failed)} of {len(targets)} target(s): {', '.join(failed)}; "
                          "the others are deployed")
    found = []
    for target in targets:
        path = ctx.stage_dir / target.slug / "results.json"
        found.append((target, read_json(path), path))
    return found
