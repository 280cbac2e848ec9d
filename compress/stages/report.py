"""report: report.md at the run dir's root, with the recommendation and the gates."""

from __future__ import annotations

from typing import Any

from compress.config import PipelineConfig
from compress.fileio import read_json, write_json, write_text
from compress.report import render_deferred, render_devices, render_markdown, summary
from compress.stages import register_stage
from compress.stages.base import Stage, StageContext


@register_stage
class ReportStage(Stage):
    name = "report"
    reads = ("benchmark", "distill", "export", "build")

    def key_material(self, pipeline: PipelineConfig) -> dict[str, Any]:
        return {"gates": pipeline.gates.model_dump(mode="json"), "name": pipeline.name}

    def run(self, ctx: StageContext) -> dict[str, Any]:
        results = read_json(ctx.path(ctx.outputs["benchmark"]["results"]))
        info = summary(results, ctx.pipeline.gates)
        markdown = render_markdown(ctx.pipeline.name, results, info)
        markdown += render_deferred(ctx.outputs.get("build", {})) + render_devices(ctx.run_dir)
        write_text(ctx.stage_dir / "report.md", markdown)
        write_text(ctx.run_dir / "report.md", markdown)
        write_json(ctx.stage_dir / "summary.json", {k: v for k, v in info.items() if k != "recommended_row"})
        for verdict in info["gates"]:
            ctx.log(f"gate {verdict['gate']}: {'PASS' if verdict['passed'] else 'FAIL'} ({verdict['detail']})")
        if info["recommended"]:
            ctx.log(f"recommended: {info['recommended']}")
        return {"report": ctx.relative(ctx.stage_dir / "report.md"), "recommended": info["recommended"],
                "gates": info["gates"], "gates_passed": info["gates_passed"]}
