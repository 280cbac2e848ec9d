"""A causal LM's deploy stage: the recommended onnxruntime-genai folder to every device of `targets`, checked there.

The same steps as the shared deploy stage and `compress deploy` (deploy/fleet.py: probe, checksummed bundle,
upload with strict host key checking, verify, smoke, benchmark, atomic switch of `current`), with a causal
LM's bundle (deploy/lm_bundle.py): the engine folder and its tokenizer, and generation settings: the export's
held-out prompts, max_new_tokens and this machine's greedy tokens for them from the same folder. Before
`current` is switched, the device decodes the prompts greedily and compares: identical tokens for an fp32
folder, else at least the bundle's agreement (min_agreement, or build's agreement with torch less
agreement_margin); otherwise the switch is refused and the old release stays current. Then it times batch-1
generation (decode_timing.time_generation). Each device's results land in stages/deploy/<target>/results.json
and its summary line in the run log, and the report is written again with them (lm_report.device_lines).
`compress deploy RUN_DIR --target ...` deploys a causal LM's run the same way, with the options of the run's
own deploy section (`command_hooks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from compress.config import PipelineConfig
from compress.core.errors import UsageError
from compress.stages.contract import Stage, StageContext
from compress.stages.deploy import DeployConfig, deploy_own_bundles, run_deploy_options, skipped_by_gates
from compress.reporting.task_report import report_refresher
from compress.stages.lm.lm_report import device_lines
from deploy import lm_bundle

# The options of a causal LM's deploy beside the shared ones (DeployConfig), as deploy/lm_bundle.py takes them.
GENERATION_OPTIONS = ("max_new_tokens", "min_agreement", "agreement_margin", "rounds")


class LMDeployConfig(DeployConfig):
    max_new_tokens: int | None = Field(None, ge=1, description="greedy tokens per shipped prompt (default: "
                                                               "stages.export.new_tokens, what build measured at)")
    min_agreement: float | None = Field(None, ge=0, le=1, description="int8/int4: share of greedy positions the device "
                                        "must agree on with the host (default: build's agreement with torch less "
                                        "agreement_margin); an fp32 folder must give identical tokens")
    agreement_margin: float = Field(0.05, ge=0, le=1, description="subtracted from build's measured agreement")
    rounds: int = Field(3, ge=1, description="timing rounds of batch-1 generation on the device")

    def check(self, pipeline: PipelineConfig):
        default_samples = type(self).model_fields["val_samples"].default
        if self.val_samples != default_samples:
            return "val_samples", ("a causal LM's bundle ships its greedy prompts and the host's tokens, not a val "
                                   "sample: remove it")
        if self.runtime is not None and self.runtime not in lm_bundle.RUNTIMES:
            return "runtime", (f"a causal LM ships an onnxruntime-genai folder (onnxruntime), an OpenVINO IR folder "
                               f"(openvino) or a folder TensorRT-LLM builds from on the device (tensorrt), not "
                               f"{self.runtime}")
        if "build" not in pipeline.stages:
            return "targets", "nothing to deploy: add stages.build (it builds the engine folders a deploy ships)"
        built = [f"student-{t.replace(':', '-')}" for t in pipeline.stages["build"].targets]
        if self.runtime is not None and not any(t.startswith(f"{self.runtime}:") for t in pipeline.stages["build"].targets):
            return "runtime", f"stages.build builds no {self.runtime} engine (targets: {', '.join(pipeline.stages['build'].targets)})"
        if self.artifact is not None and self.artifact not in built:
            return "artifact", f"'{self.artifact}' is not built; stages.build builds: {', '.join(built)}"
        return super().check(pipeline)

    def settings(self, where: str = "stages.deploy") -> lm_bundle.GenerationSettings:
        return lm_bundle.GenerationSettings(**{name: getattr(self, name) for name in GENERATION_OPTIONS}, where=where)


def settings_of_run(run_dir: Path) -> lm_bundle.GenerationSettings:
    """The generation options of a finished run's deploy section (its pipeline.yaml), the defaults without one."""
    given, path = run_deploy_options(run_dir, GENERATION_OPTIONS)
    try:
        return lm_bundle.GenerationSettings(**given, where=f"{path}: stages.deploy")
    except TypeError as error:
        raise UsageError(f"{path}: stages.deploy: {error}") from None


class LMDeployStage(Stage):
    name = "deploy"
    Config = LMDeployConfig
    optional = True
    reads = ("export", "build", "benchmark", "report")
    keeps_dir = True

    @staticmethod
    def command_hooks(run_dir: Path) -> tuple[Any, Any, Any]:
        """What `compress deploy` hands the deploy package for a causal LM's run: (no val sample maker, the report
        refresher, the packer of its bundles)."""
        return None, report_refresher(device_lines), lm_bundle.packer(settings_of_run(run_dir))

    def run(self, ctx: StageContext) -> dict[str, Any]:
        cfg: LMDeployConfig = ctx.config
        found = deploy_own_bundles(ctx, cfg, lm_bundle.packer(cfg.settings()), report_refresher(device_lines),
                                   lm_bundle.RUNTIME)
        if found is None:
            return {"deployed": [], "skipped": skipped_by_gates(ctx)}
        deployed = []
        for target, results, path in found:
            row = (results.get("rows") or [{}])[0]
            deployed.append({"target": target.label, "results": ctx.relative(path), "release": results["release"],
                             "artifact": results["artifact"], "tokens_per_s": row.get("tokens_per_s"),
                             "agreement_with_host": (row.get("accuracy") or {}).get("agreement_with_host")})
        return {"deployed": deployed}
