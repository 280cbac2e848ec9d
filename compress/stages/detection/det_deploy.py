"""A detector's deploy stage: one built engine to every device of `targets`, checked there in boxes.

The same steps as the shared deploy stage and `compress deploy` (deploy/fleet.py: probe, checksummed bundle,
upload with strict host key checking, verify, smoke, benchmark, atomic switch of `current`), with a detector's
bundle (deploy/detection_bundle.py): the engine folder (default: the report's recommended one), the letterbox,
decode and NMS the host measured with, and a sample: the evaluation split's first `sample_images` images as
files with this machine's boxes for them from the same engine. Before `current` is switched, the device detects
those files and matches its boxes with the host's (same class, IoU >= 0.9): at least `min_box_agreement`, else
0.99 for an fp32 engine, else build's box agreement of that engine with torch less `agreement_margin`; otherwise
the switch is refused and the old release stays current. Then it times the model at batch 1 and an image file
to its boxes. Each device's results land in stages/deploy/<target>/results.json and its summary line in the run
log, and the report is written again with them (det_report.device_lines). `compress deploy RUN_DIR --target ...`
deploys a detector's run the same way, with the options of the run's own deploy section (`command_hooks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from compress.config import DataConfig, PipelineConfig
from compress.core.errors import UsageError
from compress.stages.contract import Stage, StageContext
from compress.stages.deploy import DeployConfig, deploy_own_bundles, run_deploy_options, skipped_by_gates
from compress.reporting.task_report import report_refresher
from compress.stages.detection.det_report import device_lines
from compress.tasks.registry import task_named
from deploy import detection_bundle

# The options of a detector's deploy beside the shared ones (DeployConfig), as deploy/detection_bundle.py takes them.
DETECTION_OPTIONS = ("sample_images", "min_box_agreement", "agreement_margin", "rounds")


class DetDeployConfig(DeployConfig):
    sample_images: int = Field(8, ge=1, description="held-out images shipped as files with the host's boxes for them "
                                                    "(the evaluation split's first ones)")
    min_box_agreement: float | None = Field(None, ge=0, le=1, description="share of the host's boxes the device must "
                                            "find again (same class, IoU >= 0.9); default: 0.99 for an fp32 engine, "
                                            "build's box agreement less agreement_margin otherwise")
    agreement_margin: float = Field(0.05, ge=0, le=1, description="subtracted from build's measured box agreement")
    rounds: int = Field(3, ge=1, description="timing rounds on the device")

    def built(self, pipeline: PipelineConfig) -> list[str]:
        """The engines stages.build makes, by artifact name: the student at every CPU target, the teacher at fp32."""
        names = []
        for role in ("teacher", "student"):
            for target in pipeline.stages["build"].targets:
                backend, _, precision = target.partition(":")
                if backend in detection_bundle.RUNTIMES and (role == "student" or precision == "fp32"):
                    names.append(f"{role}.{backend}.{precision}")
        return names

    def check(self, pipeline: PipelineConfig):
        default_samples = type(self).model_fields["val_samples"].default
        if self.val_samples != default_samples:
            return "val_samples", ("a detector's bundle ships sample images and the host's boxes for them, not a val "
                                   "sample: use sample_images")
        if self.runtime is not None and self.runtime not in detection_bundle.RUNTIMES:
            return "runtime", (f"a detector ships an engine built by stages.build, which runs on "
                               f"{' or '.join(detection_bundle.RUNTIMES)}, not {self.runtime}")
        if "build" not in pipeline.stages:
            return "targets", "nothing to deploy: add stages.build (it builds the engines a deploy ships)"
        built = self.built(pipeline)
        if self.artifact is not None and self.artifact not in built:
            return "artifact", f"'{self.artifact}' is not built; stages.build builds: {', '.join(built) or 'none'}"
        runtimes = [name.split(".")[1] for name in built]
        if self.artifact is not None and self.runtime is not None and self.artifact.split(".")[1] != self.runtime:
            return "runtime", f"{self.artifact} runs on {self.artifact.split('.')[1]}, not {self.runtime}"
        if self.runtime is not None and self.runtime not in runtimes:
            return "runtime", f"no {self.runtime} engine is built: add {self.runtime}:fp32 to stages.build.targets"
        if not runtimes:
            return "targets", "nothing to deploy: stages.build.targets builds no onnxruntime or openvino engine"
        # The shared checks of targets and ssh files, for the runtime the shipped engine runs on (not the target's
        # default: a jetson:// target would ask for TensorRT).
        runtime = self.artifact.split(".")[1] if self.artifact else self.runtime or runtimes[0]
        return DeployConfig.check(self.model_copy(update={"runtime": runtime}), pipeline)

    def settings(self, where: str = "stages.deploy") -> detection_bundle.DetectionSettings:
        return detection_bundle.DetectionSettings(**{name: getattr(self, name) for name in DETECTION_OPTIONS},
                                                  where=where)


def eval_images(run_dir: Path, count: int) -> tuple[str, list[Path]]:
    """The evaluation split (test where there is one, as the benchmark scored) and its first `count` image files,
    read from the run's own resolved pipeline.yaml."""
    pipeline = yaml.safe_load((Path(run_dir) / "pipeline.yaml").read_text())
    task = task_named(pipeline.get("task"), DataConfig.model_validate(pipeline["data"]))
    task.config_file = str(Path(run_dir) / "pipeline.yaml")
    plan = task.load_data(pipeline.get("seed", 0))
    split = plan.eval_split
    return split, [record.path for record in plan.splits()[split].images[:count]]


def settings_of_run(run_dir: Path) -> detection_bundle.DetectionSettings:
    """The detection options of a finished run's deploy section (its pipeline.yaml), the defaults without one."""
    given, path = run_deploy_options(run_dir, DETECTION_OPTIONS)
    try:
        return detection_bundle.DetectionSettings(**given, where=f"{path}: stages.deploy")
    except TypeError as error:
        raise UsageError(f"{path}: stages.deploy: {error}") from None


def device_line(label: str, results: dict[str, Any]) -> str:
    """One device's deploy in a line: what runs there, its box check and its speed."""
    row = (results.get("rows") or [{}])[0]
    accuracy = row.get("accuracy") or {}
    p50 = (row.get("latency_ms") or {}).get("p50")
    end_to_end = (row.get("end_to_end") or {}).get("p50_ms")
    speed = "-" if p50 is None else f"{p50:.3f}"
    file_to_boxes = "-" if end_to_end is None else f"{end_to_end:.2f}"
    return (f"{label}: release {results['release']}, {results['artifact']} on {results['runtime']}: boxes agree with "
            f"the host's on {accuracy.get('agreement_with_host', 0):.2%} of {accuracy.get('images', '?')} sample "
            f"images (required {accuracy.get('min_agreement', 0):.2%}), b1 p50 {speed} ms, {file_to_boxes} ms file "
            "to boxes")


class DetDeployStage(Stage):
    name = "deploy"
    Config = DetDeployConfig
    optional = True
    reads = ("teacher", "export", "build", "benchmark", "report")
    keeps_dir = True

    @staticmethod
    def command_hooks(run_dir: Path) -> tuple[Any, Any, Any]:
        """What `compress deploy` hands the deploy package for a detector's run: (no val sample maker, the report
        refresher, the packer of its bundles)."""
        return None, report_refresher(device_lines), detection_bundle.packer(eval_images, settings_of_run(run_dir))

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg: DetDeployConfig = ctx.config
        found = deploy_own_bundles(ctx, cfg, detection_bundle.packer(eval_images, cfg.settings()),
                                   report_refresher(device_lines))
        if found is None:
            return {"deployed": [], "skipped": skipped_by_gates(ctx)}
        deployed = []
        for target, results, path in found:
            row = (results.get("rows") or [{}])[0]
            ctx.log(device_line(target.label, results))
            deployed.append({"target": target.label, "results": ctx.relative(path), "release": results["release"],
                             "artifact": results["artifact"],
                             "box_agreement_with_host": (row.get("accuracy") or {}).get("agreement_with_host"),
                             "b1_p50_ms": (row.get("latency_ms") or {}).get("p50"),
                             "file_to_boxes_p50_ms": (row.get("end_to_end") or {}).get("p50_ms")})
        return {"deployed": deployed}
