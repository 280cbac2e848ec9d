"""The stages, in pipeline order: the one list the runner walks.

Each stage module imports only the stage contract (compress.stages.contract) and the libraries it
uses; this package imports the implementations and lists them, so the order is written once, here.
"""

from __future__ import annotations

from compress.stages.baseline import BaselineStage
from compress.stages.benchmark import BenchmarkStage
from compress.stages.build import BuildStage
from compress.stages.contract import Stage, StageContext
from compress.stages.deploy import DeployStage
from compress.stages.distill import DistillStage
from compress.stages.export import ExportStage
from compress.stages.prune import PruneStage
from compress.stages.quantize import QuantizeStage
from compress.stages.report import ReportStage
from compress.stages.teacher import TeacherStage
from compress.stages.detection import DET_STAGES
from compress.stages.lm import LM_STAGES

PIPELINE_ORDER: tuple[type[Stage], ...] = (TeacherStage, PruneStage, BaselineStage, DistillStage, QuantizeStage,
                                           ExportStage, BuildStage, BenchmarkStage, ReportStage, DeployStage)
STAGES: dict[str, type[Stage]] = {stage.name: stage for stage in PIPELINE_ORDER}
ORDER = tuple(STAGES)

# Tasks whose training, engines or measures differ wholesale run stages of their own under the same names and
# order; None: the task has no such stage (a pipeline naming it is refused at validate).
TASK_STAGES: dict[str, dict[str, type[Stage] | None]] = {"causal-lm": LM_STAGES, "object-detection": DET_STAGES}


def stages_of(task_name: str | None) -> dict[str, type[Stage]]:
    """The stages a pipeline of task `task_name` runs, in pipeline order (unset: the shared ones)."""
    own = TASK_STAGES.get(task_name, {})
    chosen = {name: own.get(name, stage) for name, stage in STAGES.items()}
    return {name: stage for name, stage in chosen.items() if stage is not None}

__all__ = ["ORDER", "PIPELINE_ORDER", "STAGES", "Stage", "StageContext", "TASK_STAGES", "stages_of"]
