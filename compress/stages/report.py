"""report: report.md, a self-contained report.html and report.json, with the recommendation and gates."""

from __future__ import annotations

from typing import Any

from compress.config import PipelineConfig
from compress.reporting import write_report
from compress.reporting.verdict import recommendation_sentence
from compress.stages.contract import Stage, StageContext


class ReportStage(Stage):
    name = "report"
    reads = ("benchmark", "teacher", "baseline", "distill", "quantize", "export", "build")

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"gates": pipeline.gates.model_dump(mode="json"), "name": pipeline.name}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        written = write_report(ctx.run_dir, ctx.outputs, copy_to=ctx.stage_dir, written_by="run")
        report = written.report
        for verdict in report["gates"]:
            ctx.log(f"gate {verdict['gate']}: {'PASS' if verdict['passed'] else 'FAIL'} ({verdict['detail']})")
        headline = report["headline"]
        if headline:
            ctx.log(recommendation_sentence(headline, report["accuracy_budget"])
                    + (f" ({headline['speedup']:.2f}x the teacher, {headline['top1_delta_pts']:+.2f} pts top-1)"
                       if headline["speedup"] is not None else ""))
            if headline["within_noise"]:
                ctx.log("within noise of it: " + ", ".join(w["artifact"] for w in headline["within_noise"]))
        elif report["unrecommended"]:
            ctx.log(f"nothing recommended: {report['unrecommended']}")
        kd = report["kd_gain"]
        if kd and kd["outcome"] == "lost":
            ctx.log(f"KD lost to the student alone ({kd['kd_gain_pts']:+.2f} pts top-1 on {kd['split']}); "
                    "see report.md, 'What distillation bought'")
        return {"report": ctx.relative(ctx.stage_dir / "report.md"),
                "html": ctx.relative(ctx.stage_dir / "report.html"),
                "json": ctx.relative(ctx.stage_dir / "report.json"),
                "recommended": headline["recommended"] if headline else None,
                "gates": report["gates"], "gates_passed": report["gates_passed"]}
