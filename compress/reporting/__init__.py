"""Reports of a run: report.md, a self-contained report.html and report.json, from saved files only.

`write_report(run_dir)` is what both the report stage and `compress report RUN_DIR` call, so a
report rebuilt later (after a deploy added device results) has the same shape as the first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from compress.core.fileio import write_json, write_text
from compress.reporting import fmt
from compress.reporting.analysis import QUIET, analyze
from compress.reporting.charts import data_uri, render_charts
from compress.reporting.collect import collect
from compress.reporting.markdown import DEVICE_TOP1, MEMORY_NOTE, RESULT_HEADERS, render_markdown, result_cells
from compress.reporting.search_trials import trial_cells, trial_headers
from compress.reporting.uncertainty import noise_phrase
from compress.reporting.verdict import recommendation_sentence

TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class WrittenReport:
    report: dict[str, Any]
    paths: list[Path]

    @property
    def failed_gates(self) -> list[dict[str, Any]]:
        return [g for g in self.report["gates"] if not g["passed"]]


def render_html(report: dict[str, Any], charts: dict[str, bytes]) -> str:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]),
                      trim_blocks=True, lstrip_blocks=True)
    template = env.get_template("report.html.j2")
    return template.render(r=report, f=fmt, charts={k: data_uri(v) for k, v in charts.items()},
                           headers=RESULT_HEADERS, cells=result_cells, quiet=QUIET, noise=noise_phrase,
                           memory_note=MEMORY_NOTE.replace("`", ""), recommendation=recommendation_html,
                           device_top1=DEVICE_TOP1, trial_headers=trial_headers, trial_cells=trial_cells)


def recommendation_html(headline: dict[str, Any], budget: dict[str, Any]) -> Markup:
    """The summary's sentence of verdict.recommendation_sentence, its words escaped, the artifact in <strong>."""
    marked = Markup("<strong>{}</strong> <code>{}</code>").format(headline["recommended"], headline["artifact"])
    placeholder = "\x00"
    sentence = escape(recommendation_sentence(headline, budget, mark=lambda _: placeholder))
    return Markup(str(sentence).replace(placeholder, str(marked)))


# The header says which command wrote the report: the report stage of `compress run` writes it
# first; `compress report` and a deploy (which adds the device results) write it again later.
WRITTEN_BY = {"run": "written by `compress run` (its report stage)",
              "report": "rebuilt from saved results by `compress report RUN_DIR`",
              "deploy": "rebuilt from saved results after a deploy added the device results"}


def build_report(run_dir: str | Path, outputs: dict[str, dict] | None = None,
                 written_by: str = "report") -> tuple[dict, str, str]:
    """(report data, markdown, html) of a run dir; `written_by` is a key of WRITTEN_BY."""
    facts = collect(run_dir, outputs)
    report = {**analyze(facts), "written_by": WRITTEN_BY[written_by]}
    charts = render_charts(report, facts.metrics)
    return report, render_markdown(report), render_html(report, charts)


def write_report(run_dir: str | Path, outputs: dict[str, dict] | None = None,
                 copy_to: Path | None = None, written_by: str = "report") -> WrittenReport:
    """Write report.md, report.html and report.json at the run dir's root (and into `copy_to`)."""
    run_dir = Path(run_dir)
    report, markdown, html = build_report(run_dir, outputs, written_by)
    paths = []
    for folder in [run_dir, *([copy_to] if copy_to else [])]:
        write_text(folder / "report.md", markdown)
        write_text(folder / "report.html", html)
        write_json(folder / "report.json", json.loads(json.dumps(report, default=str)))
        paths += [folder / "report.md", folder / "report.html", folder / "report.json"]
    return WrittenReport(report, paths)


def rewrite_report(run_dir: str | Path, written_by: str = "report") -> WrittenReport:
    """Rebuild a run's report from its saved files, keeping the report stage's copies in step."""
    stage_dir = Path(run_dir) / "stages" / "report"
    return write_report(run_dir, copy_to=stage_dir if stage_dir.is_dir() else None, written_by=written_by)
