"""The stages an object detector runs in place of the shared ones (same names, same order; see compress.stages)."""

from __future__ import annotations

from compress.stages.detection.det_deploy import DetDeployStage
from compress.stages.detection.det_report import DetReportStage
from compress.stages.detection.det_engines import DetBuildStage, DetExportStage
from compress.stages.detection.det_measure import DetBenchmarkStage
from compress.stages.detection.det_training import DetBaselineStage, DetDistillStage, DetTeacherStage

# None: no such stage for detectors (structured pruning of a detector, NNCF QAT: int8 is built with accuracy
# control in build). A pipeline naming it is refused.
DET_STAGES = {"teacher": DetTeacherStage, "prune": None, "baseline": DetBaselineStage, "distill": DetDistillStage,
              "quantize": None, "export": DetExportStage, "build": DetBuildStage, "benchmark": DetBenchmarkStage,
              "report": DetReportStage, "deploy": DetDeployStage}
