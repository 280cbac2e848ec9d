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

PIPELINE_ORDER: tuple[type[Stage], ...] = (TeacherStage, PruneStage, BaselineStage, DistillStage, QuantizeStage,
                                           ExportStage, BuildStage, BenchmarkStage, ReportStage, DeployStage)
STAGES: dict[str, type[Stage]] = {stage.name: stage for stage in PIPELINE_ORDER}
ORDER = tuple(STAGES)

__all__ = ["ORDER", "PIPELINE_ORDER", "STAGES", "Stage", "StageContext"]
