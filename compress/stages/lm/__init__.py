"""The stages a causal LM runs in place of the shared ones (same names, same order; see compress.stages)."""

from __future__ import annotations

from compress.stages.lm.depth_prune import LMPruneStage
from compress.stages.lm.engines import LMBuildStage, LMExportStage
from compress.stages.lm.lm_deploy import LMDeployStage
from compress.stages.lm.measure import LMBenchmarkStage
from compress.stages.lm.lm_report import LMReportStage
from compress.stages.lm.model_stages import LMBaselineStage, LMDistillStage, LMTeacherStage

# None: no such stage for causal LMs yet (NNCF quantize: weight-only quantization is in build).
# A pipeline naming it is refused.
LM_STAGES = {"teacher": LMTeacherStage, "prune": LMPruneStage, "baseline": LMBaselineStage, "distill": LMDistillStage,
             "quantize": None, "export": LMExportStage, "build": LMBuildStage, "benchmark": LMBenchmarkStage,
             "report": LMReportStage, "deploy": LMDeployStage}
