"""The report files of a task whose report stage is its own (causal LMs, detectors): one markdown text, rendered.

Such a report is written as markdown by its stage; this module turns it into the self-contained HTML page (no
file fetched: pictures are embedded) and puts report.md, report.html and report.json in the stage folder, with
copies of the first two at the top of the run folder where the shared report's lie.

A deploy measures on the device after the report is written, so the stage's own text is kept (body.md) and the
device results (stages/deploy/<target>/results.json) are rendered after it by the task's `device_lines`, each
time the report is published: by the report stage, and again by every deploy (`refresh_report`).
"""

from __future__ import annotations

import base64
import html
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from compress.core.fileio import read_json, write_json, write_text

PICTURE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")


def render_html(markdown: str, title: str, folder: Path | None = None) -> str:
    """A self-contained page: headings, lists, tables, code blocks and pictures (`![alt](file.png)` on a line of
    its own, the PNG read from `folder` and embedded) of the markdown, nothing fetched."""
    body, in_table, in_code = [], False, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            body.append(("<table>" if not in_table else "") + "<tr>" + "".join(
                f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            in_table = True
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        picture = PICTURE.match(line.strip())
        if picture and folder is not None and (folder / picture.group(2)).is_file():
            encoded = base64.b64encode((folder / picture.group(2)).read_bytes()).decode()
            body.append(f"<img alt='{html.escape(picture.group(1))}' src='data:image/png;base64,{encoded}'>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:]).replace('**', '')}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.2em .5em}pre{background:#f4f4f4;padding:.5em;white-space:pre-wrap}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# (the device results of the run as compress.reporting.collect.read_devices reads them, report.json's data)
# -> the markdown lines of the device section, none when there is nothing to say
DeviceLines = Callable[[list[dict[str, Any]], dict[str, Any]], list[str]]
BODY = "body.md"


def publish_report(stage_dir: Path, run_dir: Path, markdown: str, title: str, report: dict[str, Any],
                   device_lines: DeviceLines | None = None) -> None:
    """report.md (the stage's markdown, then the device results' section), report.html (pictures from the stage
    folder embedded) and report.json in the stage folder; the markdown and the page, and the pictures the markdown
    names, copied to the run folder."""
    write_text(stage_dir / BODY, markdown)
    render_with_devices(stage_dir, run_dir, markdown, {**report, "title": title}, device_lines)


def refresh_report(run_dir: Path, device_lines: DeviceLines) -> bool:
    """After a deploy: the report stage's text again, with the device results as they are now; False (nothing
    written) where the run has no report of this kind yet."""
    from compress.core.console import Console
    from compress.core.errors import CompressError

    stage_dir = Path(run_dir) / "stages" / "report"
    if not (stage_dir / BODY).is_file() or not (stage_dir / "report.json").is_file():
        return False
    try:
        render_with_devices(stage_dir, Path(run_dir), (stage_dir / BODY).read_text(),
                            read_json(stage_dir / "report.json"), device_lines)
    except CompressError as error:  # an unreadable device results file: said; the deploy itself stands
        Console.error(str(error))
        return False
    return True


def device_section(devices: list[dict[str, Any]], intro: str, table_head: list[str],
                   row_lines: Callable[[dict[str, Any]], list[str]]) -> list[str]:
    """The "On the device" section a task's `device_lines` returns: `intro`, then per device its heading, the
    table head and the lines `row_lines` makes of each of its result rows."""
    lines = ["## On the device", "", intro, ""]
    for device in devices:
        lines += device_heading(device) + table_head
        for row in device["rows"]:
            lines += row_lines(row)
        lines.append("")
    return lines


def device_heading(device: dict[str, Any]) -> list[str]:
    """A device's subsection head in a device section: its target, what its probe found, which release."""
    from compress.reporting.analysis import release_line

    info = device["device"] if isinstance(device["device"], dict) else {"info": device["device"]}
    described = ", ".join(f"{k}: {v}" for k, v in info.items() if v not in (None, "", [], {}))
    return [f"### {device['target']}", ""] + [f"- {text}" for text in (described, release_line(device.get("release")))
                                              if text] + [""]


def report_refresher(device_lines: DeviceLines) -> Callable[[Path], bool]:
    """What a deploy calls with the run dir when it is done: the report again with `device_lines`'s section."""
    return lambda run_dir: refresh_report(run_dir, device_lines)


def render_with_devices(stage_dir: Path, run_dir: Path, markdown: str, report: dict[str, Any],
                        device_lines: DeviceLines | None) -> None:
    """The stage's `markdown` with the device section after it, as report.md, report.html and report.json (the
    stage's `report` with the devices listed)."""
    from compress.reporting.collect import read_devices

    devices = read_devices(run_dir) if device_lines else []
    extra = device_lines(devices, report) if devices else []
    if extra:
        markdown = markdown.rstrip("\n") + "\n\n" + "\n".join(extra) + "\n"
    report["devices"] = [{"target": d["target"], "path": d["path"], "release": d["release"]} for d in devices]
    write_text(stage_dir / "report.md", markdown)
    write_text(stage_dir / "report.html", render_html(markdown, report.get("title", "report"), stage_dir))
    write_json(stage_dir / "report.json", report)
    pictures = [m.group(2) for m in map(PICTURE.match, (line.strip() for line in markdown.splitlines())) if m]
    for name in ["report.md", "report.html"] + [p for p in pictures if (stage_dir / p).is_file()]:
        shutil.copy2(stage_dir / name, run_dir / name)
