"""The deployment report: every section, gates, self-contained HTML, rebuild from saved files, runs/compare.

Most tests use a run dir written by hand in the run-dir contract (results.json rows, run.json
outputs, metrics.jsonl, deploy results), so every section can be exercised in milliseconds; the
end-to-end tests in test_pipeline.py run the real stages.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image

from compress.cli import main
from compress.config import GatesConfig
from compress.reporting.verdict import summary

CLASSES = [str(c) for c in range(10)]


def row(model: str, backend: str, precision: str, batch: int, p50: float, top1: float, size_mb: float, **extra) -> dict:
    per_class = {str(c): min(1.0, top1 + (c - 4.5) / 100) for c in range(10)}
    return {"model": model, "artifact": f"stages/x/{model}.{backend}.{precision}", "backend": backend,
            "precision": precision, "batch_size": batch,
            "latency_ms": {"mean": p50 * 1.02, "std": p50 * 0.03, "min": p50 * 0.95, "max": p50 * 1.3, "p50": p50,
                           "p90": p50 * 1.05, "p99": p50 * 1.1, "iqr": p50 * 0.02, "runs": 150, "noisy": False,
                           "round_p50s": [p50 * 0.99, p50, p50 * 1.01], "p50_spread": p50 * 0.04},
            "throughput_per_s": batch * 1000 / p50,
            "accuracy": {"top1": top1, "top5": min(1.0, top1 + 0.05), "agreement_with_teacher": 0.97,
                         "per_class": per_class},
            "params": 100_000 if model == "teacher" else 10_000, "macs": 5_000_000 if model == "teacher" else 300_000,
            "size_mb": size_mb, "threads": 2, "peak_rss_mb": 400.0, "memory": memory(backend, size_mb), **extra}


def memory(backend: str, size_mb: float) -> dict:
    """A footprint as compress/footprint.py writes it: torch's runtime is the heavy part."""
    runtime = {"torch": 500.0, "onnxruntime": 50.0, "openvino": 55.0}[backend]
    model = round(2 * size_mb + 5, 1)
    return {"peak_mb": runtime + model, "runtime_mb": runtime, "model_mb": model, "batch_size": 8,
            "torch_imported": backend == "torch"}


def rows_for(batch: int, scale: float) -> list[dict]:
    return [
        row("teacher", "torch", "fp32", batch, 10.0 * scale, 0.98, 4.0),
        row("student", "torch", "fp32", batch, 3.0 * scale, 0.96, 0.4),
        row("student", "onnxruntime", "fp32", batch, 1.5 * scale, 0.96, 0.4),
        row("student", "onnxruntime", "int8", batch, 1.2 * scale, 0.955, 0.12),
        row("student", "openvino", "fp32", batch, 0.9 * scale, 0.96, 0.4),
        row("student", "openvino", "int8", batch, 0.5 * scale, 0.95, 0.12),
    ]


def metrics(epochs: int, start: float, parts: tuple[str, ...]) -> str:
    lines = []
    for e in range(1, epochs + 1):
        record = {"epoch": e, "loss": 2.0 / e, **{p: 1.0 / e for p in parts}, "lr": 0.01 / e,
                  "val_top1": min(0.99, start + 0.05 * e), "seconds": 0.5}
        lines.append(json.dumps(record))
    return "\n".join(lines) + "\n"


def write_run(run_dir: Path, gates: dict | None = None, baseline: bool = True, device: bool = True,
              deferred: bool = True, noisy: bool = False) -> Path:
    """A finished run dir as the stages leave it (what `compress report` reads)."""
    stages = run_dir / "stages"
    for name in ("teacher", "baseline", "distill", "benchmark", "build"):
        (stages / name).mkdir(parents=True, exist_ok=True)
    rows = rows_for(1, 1.0) + rows_for(8, 4.0)
    if noisy:
        rows[2]["latency_ms"].update(p90=rows[2]["latency_ms"]["p50"] * 3, noisy=True)
        rows[2]["note"] = "p90 is 200% above p50: the machine was busy"
    results = {"env": {"cpu": "AMD EPYC", "cores": 2, "threads": 2, "gpu": None, "torch": "2.x",
                       "onnxruntime": "1.x", "openvino": "2026.x", "tensorrt": None,
                       "measured_at": "2026-11-23T12:00:00+0000"},
               "val_samples": 360, "class_names": CLASSES,
               "settings": {"batch_sizes": [1, 8], "warmup": 5, "warmup_seconds": 0.2, "runs": 30, "min_seconds": 0.5,
                            "rounds": 3},
               "rows": rows}
    (stages / "benchmark" / "results.json").write_text(json.dumps(results))
    (stages / "teacher" / "metrics.jsonl").write_text(metrics(6, 0.7, ("ce",)))
    (stages / "distill" / "metrics.jsonl").write_text(metrics(6, 0.6, ("kd", "ce")))
    outputs = {
        "teacher": {"checkpoint": "stages/teacher/teacher.pt", "val_top1": 0.98, "best_epoch": 6},
        "distill": {"checkpoint": "stages/distill/student.pt", "val_top1": 0.96, "best_epoch": 6,
                    "metrics": "stages/distill/metrics.jsonl"},
        "build": {"engines": [], "deferred": [{"model": "student", "backend": "tensorrt", "precision": "int8",
                                               "reason": "no CUDA GPU here",
                                               "how": "compress deploy RUN --target jetson://... --runtime tensorrt"}]
                  if deferred else []},
        "benchmark": {"results": "stages/benchmark/results.json"},
    }
    if baseline:
        (stages / "baseline" / "metrics.jsonl").write_text(metrics(6, 0.55, ("ce",)))
        outputs["baseline"] = {"checkpoint": "stages/baseline/student.pt", "val_top1": 0.93, "best_epoch": 5,
                               "metrics": "stages/baseline/metrics.jsonl"}
    run_json = {"name": run_dir.name, "stages": {k: {"key": "k", "status": "done", "outputs": v}
                                                 for k, v in outputs.items()}}
    (run_dir / "run.json").write_text(json.dumps(run_json))
    (run_dir / "pipeline.yaml").write_text(yaml.safe_dump({"name": run_dir.name, "gates": gates or {}}))
    if device:
        target = stages / "deploy" / "jetson-orin"
        target.mkdir(parents=True)
        device_rows = [dict(row("student", "openvino", "int8", 1, 2.5, 0.95, 0.12),
                            power={"rail": "VDD_IN", "mean_mw": 5000.0, "max_mw": 6100.0, "samples": 12},
                            energy_mj_per_sample=12.5)]
        (target / "results.json").write_text(json.dumps(
            {"target": "jetson://nvidia@orin/opt/models", "device": {"model": "Orin Nano", "jetpack": "6.1"},
             "rows": device_rows}))
    return run_dir


class ImagesAndLinks(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for name in ("href", "src"):
            if attrs.get(name):
                self.links.append(attrs[name])
        if attrs.get("id"):
            self.ids.append(attrs["id"])


def parse_html(text: str) -> ImagesAndLinks:
    parser = ImagesAndLinks()
    parser.feed(text)
    return parser


def test_every_section_is_written_to_markdown_html_and_json(tmp_path):
    run_dir = write_run(tmp_path / "r1", gates={"max_accuracy_drop": 0.03, "min_speedup": 2.0,
                                                "max_latency_ms": {1: 5.0, 8: 20.0}, "max_size_mb": 1.0})
    assert main(["--quiet", "report", str(run_dir)]) == 0
    md = (run_dir / "report.md").read_text()
    for heading in ("## Summary", "## Gates", "## Latency vs accuracy", "## Latency per batch size", "## All results",
                    "## INT8 vs FP32", "## What distillation bought", "## Training", "## Per-class accuracy",
                    "## Deferred builds", "## Device results", "## Measurement notes", "## Environment"):
        assert heading in md, heading
    # The fastest student within 3 points of the teacher (98%): openvino int8 at 95% is 3.0 points down.
    assert "Recommended artifact: **student.openvino.int8**" in md
    assert "**20.00x**" in md and "**4.00x" not in md  # 10 ms / 0.5 ms at batch 1
    assert "**33.33x smaller**" in md  # 4 MB / 0.12 MB
    assert "KD gain: **+3.00 pts**" in md and "closes 60% of the gap" in md
    assert "| onnxruntime | student.onnxruntime.fp32 | student.onnxruntime.int8 | 96.00% | 95.50% | -0.50 pts |" in md
    assert "jetson://nvidia@orin/opt/models" in md and "Orin Nano" in md
    assert "| host p50 ms | peak RSS MB | power W | mJ/sample |" in md and "| 0.500 | 400 | 5.00 | 12.500 |" in md
    assert "Power: mean of tegrastats' VDD_IN rail" in md
    assert "compress deploy RUN --target jetson://... --runtime tensorrt" in md
    assert "| max_latency_ms[b8] | 20.0 | 2 | PASS |" in md
    assert "(0.500 ± 0.020 ms vs 10.00 ms p50)" in md  # the recommended p50 with how far a rerun may land
    assert "| student | openvino | int8 | 1 | 0.500 | 0.020 |" in md
    assert "in 3 round(s), each a fresh load" in md and "± within 10% of p50" in md

    html = (run_dir / "report.html").read_text()
    parsed = parse_html(html)
    for section in ("summary", "gates", "tradeoff", "batches", "results", "int8", "kd", "training", "per-class",
                    "deferred", "devices", "notes", "env"):
        assert section in parsed.ids, section
    assert len(parsed.images) == 4  # trade-off, batch sizes, training curves, per class
    assert "0.500 ± 0.020 ms vs 10.00 ms p50" in html and "<th class=\"n\">± ms</th>" in html

    report = json.loads((run_dir / "report.json").read_text())
    assert report["headline"]["recommended"] == "student.openvino.int8" and report["gates_passed"]
    assert report["pareto"] == ["student.openvino.int8", "student.openvino.fp32", "teacher.torch.fp32"]
    assert [p["int8"] for p in report["int8_vs_fp32"]] == ["student.onnxruntime.int8", "student.openvino.int8"]
    assert report["devices"][0]["rows"][0]["host_p50"] == 0.5


def test_a_candidate_within_noise_of_the_recommended_one_is_named_beside_it(tmp_path):
    run_dir = write_run(tmp_path / "r1", gates={"max_accuracy_drop": 0.03})
    results = run_dir / "stages" / "benchmark" / "results.json"
    saved = json.loads(results.read_text())
    close = next(r for r in saved["rows"] if r["backend"] == "onnxruntime" and r["precision"] == "int8"
                 and r["batch_size"] == 1)
    close["latency_ms"].update(p50=0.51, p50_spread=0.03)  # 0.01 ms behind openvino int8 (0.5 ± 0.02)
    results.write_text(json.dumps(saved))
    assert main(["--quiet", "report", str(run_dir)]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["headline"]["recommended"] == "student.openvino.int8"
    assert [w["artifact"] for w in report["headline"]["within_noise"]] == ["student.onnxruntime.int8"]
    md = (run_dir / "report.md").read_text()
    assert "- Within noise of it (a rerun could rank these first): `student.onnxruntime.int8` 0.510 ± 0.030 ms" in md
    assert "<code>student.onnxruntime.int8</code> 0.510 ± 0.030 ms" in (run_dir / "report.html").read_text()

    close["latency_ms"].update(p50=0.56)  # beyond both ±: the recommendation stands alone
    results.write_text(json.dumps(saved))
    assert main(["--quiet", "report", str(run_dir)]) == 0
    assert json.loads((run_dir / "report.json").read_text())["headline"]["within_noise"] == []
    assert "Within noise of it" not in (run_dir / "report.md").read_text()

    # Very noisy and 0.04 ms slower: inside its own ± (0.05) but not inside the difference's
    # √((0.02² + 0.05²) / 2) = 0.038 ms, so the steady, faster artifact stands alone.
    close["latency_ms"].update(p50=0.54, p50_spread=0.05)
    results.write_text(json.dumps(saved))
    assert main(["--quiet", "report", str(run_dir)]) == 0
    assert json.loads((run_dir / "report.json").read_text())["headline"]["within_noise"] == []


def test_html_is_self_contained_with_every_chart_an_embedded_png(tmp_path):
    run_dir = write_run(tmp_path / "r1", gates={"max_accuracy_drop": 0.03})
    device_results = run_dir / "stages" / "deploy" / "jetson-orin" / "results.json"
    device = json.loads(device_results.read_text())
    device["device"]["note"] = "<script>alert(1)</script>"  # text from a device is shown, never run
    device_results.write_text(json.dumps(device))
    assert main(["--quiet", "report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    parsed = parse_html(html)
    assert parsed.images
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        image.verify()
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200
    assert all(link.startswith(("#", "data:")) for link in parsed.links), parsed.links
    assert not re.search(r"https?://", html.replace("jetson://", "")), "no external URL anywhere"
    assert "<script" not in html and "<link" not in html


def test_optional_sections_are_left_out_when_their_stage_did_not_run(tmp_path):
    run_dir = write_run(tmp_path / "r1", baseline=False, device=False, deferred=False)
    assert main(["--quiet", "report", str(run_dir)]) == 0
    md = (run_dir / "report.md").read_text()
    assert "## Summary" in md and "## Training" in md
    for absent in ("## What distillation bought", "## Device results", "## Deferred builds"):
        assert absent not in md
    assert "No gates configured" in md


def test_a_failed_gate_is_named_in_every_report_and_on_the_console(tmp_path, capsys):
    run_dir = write_run(tmp_path / "r1", gates={"max_accuracy_drop": 0.05, "max_latency_ms": {1: 0.1},
                                                "max_size_mb": 1.0})
    assert main(["report", str(run_dir)]) == 0  # rebuilding a report is not a run: the gate verdict is reported
    out = capsys.readouterr().out
    assert "gate max_latency_ms[b1]: FAIL (p50 0.500 ± 0.020 ms at batch 1)" in out
    md = (run_dir / "report.md").read_text()
    assert "GATES FAILED**: max_latency_ms[b1]" in md and "| max_size_mb | 1.0 | 0.12 | PASS |" in md
    assert "Gates failed: max_latency_ms[b1]" in (run_dir / "report.html").read_text()
    assert json.loads((run_dir / "report.json").read_text())["gates_passed"] is False


def test_gates_pass_and_fail_on_the_recommended_artifact():
    rows = rows_for(1, 1.0) + rows_for(8, 4.0)
    results = {"rows": rows}
    passing = summary(results, GatesConfig(max_accuracy_drop=0.02, min_speedup=3.0, max_latency_ms=4.0,
                                           max_size_mb=0.5))
    assert passing["recommended"] == "student.openvino.fp32"  # openvino int8 is 3 points down: out of the gate
    assert passing["gates_passed"] and len(passing["gates"]) == 5  # 4 gates, latency judged at batch 1 and 8
    assert not summary(results, GatesConfig(max_accuracy_drop=0.02, max_latency_ms=3.0))["gates_passed"]  # 3.6 ms at batch 8
    failing = summary(results, GatesConfig(max_accuracy_drop=0.02, min_speedup=20.0, max_latency_ms={1: 0.5, 32: 9.0}))
    verdicts = {g["gate"]: g["passed"] for g in failing["gates"]}
    assert verdicts == {"max_accuracy_drop": True, "min_speedup": False, "max_latency_ms[b1]": False,
                        "max_latency_ms[b32]": False}
    assert "not benchmarked" in next(g["detail"] for g in failing["gates"] if g["gate"] == "max_latency_ms[b32]")
    assert "within noise" not in next(g["detail"] for g in failing["gates"] if g["gate"] == "max_latency_ms[b1]")


def test_memory_alone_is_in_the_summary_the_table_and_the_memory_gate(tmp_path, capsys):
    run_dir = write_run(tmp_path / "r1", gates={"max_accuracy_drop": 0.03, "max_memory_mb": 100})
    assert main(["--quiet", "report", str(run_dir)]) == 0
    md = (run_dir / "report.md").read_text()
    # Recommended: student.openvino.int8, 55 MB runtime + 5.2 MB; the teacher on torch 513 MB.
    assert ("- Memory: 60 MB peak resident, alone in a fresh process (runtime 55 MB + 5 MB to load and run at batch 8); "
            "the teacher 513 MB") in md
    assert "| size MB | memory MB |" in md and "| 0.120 | 60 |" in md
    assert "| max_memory_mb | 100.0 | 60.2 | PASS | 60 MB peak resident, alone in a fresh process" in md
    html = (run_dir / "report.html").read_text()
    assert "Memory alone" in html and "vs 513 MB for the teacher" in html

    write_run(tmp_path / "r2", gates={"max_accuracy_drop": 0.03, "max_memory_mb": 50})
    assert main(["report", str(tmp_path / "r2")]) == 0
    assert "gate max_memory_mb: FAIL (60 MB peak resident, alone" in capsys.readouterr().out

    rows = [{k: v for k, v in r.items() if k != "memory"} for r in rows_for(1, 1.0)]  # stages.benchmark.memory off
    unmeasured = summary({"rows": rows}, GatesConfig(max_memory_mb=100))["gates"]
    assert unmeasured == [{"gate": "max_memory_mb", "limit": 100, "value": None, "passed": False,
                           "detail": "not measured: no memory in the results (stages.benchmark.memory off, or measured "
                                     "before it existed)"}]
    failed_child = rows_for(1, 1.0)
    for r in failed_child:
        r["memory"] = {"error": "MemoryError"}
    assert summary({"rows": failed_child}, GatesConfig(max_memory_mb=100))["gates"][0]["detail"] == \
        "not measured: MemoryError"


def test_a_latency_gate_within_the_noise_of_its_limit_says_a_rerun_may_flip_it():
    results = {"rows": rows_for(1, 1.0)}  # recommended: student.openvino.fp32, p50 0.9 ± 0.036 ms
    close_pass = summary(results, GatesConfig(max_accuracy_drop=0.02, max_latency_ms=0.92))["gates"][-1]
    assert close_pass["passed"] and close_pass["detail"] == (
        "p50 0.900 ± 0.036 ms at batch 1; within noise of the limit: a rerun may fail")
    close_fail = summary(results, GatesConfig(max_accuracy_drop=0.02, max_latency_ms=0.88))["gates"][-1]
    assert not close_fail["passed"] and close_fail["detail"].endswith("a rerun may pass")
    clear = summary(results, GatesConfig(max_accuracy_drop=0.02, max_latency_ms=2.0))["gates"][-1]
    assert clear["passed"] and clear["detail"] == "p50 0.900 ± 0.036 ms at batch 1"


def test_noisy_measurements_are_flagged_in_the_report(tmp_path):
    run_dir = write_run(tmp_path / "r1", noisy=True)
    assert main(["--quiet", "report", str(run_dir)]) == 0
    md = (run_dir / "report.md").read_text()
    assert "⚠ student.onnxruntime.fp32 batch 1: p90 is 200% above p50" in md


def test_report_rebuild_from_saved_files_is_identical_and_folds_in_new_device_results(tmp_path):
    run_dir = write_run(tmp_path / "r1", device=False)
    assert main(["--quiet", "report", str(run_dir)]) == 0
    first = {name: (run_dir / name).read_text() for name in ("report.md", "report.html", "report.json")}
    for name in first:
        (run_dir / name).unlink()
    assert main(["--quiet", "report", str(run_dir)]) == 0
    assert {name: (run_dir / name).read_text() for name in first} == first

    target = run_dir / "stages" / "deploy" / "edge-box"
    target.mkdir(parents=True)
    (target / "results.json").write_text(json.dumps({"target": "ssh://me@edge/opt/m", "device": {"cpu": "Cortex-A78"},
                                                     "rows": [row("student", "onnxruntime", "fp32", 1, 4.0, 0.96, 0.4)]}))
    assert main(["--quiet", "report", str(run_dir)]) == 0
    md = (run_dir / "report.md").read_text()
    assert "### ssh://me@edge/opt/m" in md and "cpu: Cortex-A78" in md
    assert "| student.onnxruntime.fp32 | 1 | 4.000 |" in md


def test_report_of_a_bad_run_dir_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "pipeline.yaml: not found" in capsys.readouterr().err
    run_dir = write_run(tmp_path / "r1")
    (run_dir / "stages" / "deploy" / "jetson-orin" / "results.json").write_text('{"rows": 3}')
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("jetson-orin/results.json: rows: must be a list of result rows") and "\n" not in err
    (run_dir / "pipeline.yaml").write_text(yaml.safe_dump({"name": "r1", "gates": {"max_size_mb": -1}}))
    assert main(["report", str(run_dir)]) == 2
    assert "pipeline.yaml: gates.max_size_mb: Input should be greater than 0" in capsys.readouterr().err


def test_runs_lists_headlines_and_compare_shows_two_runs_side_by_side(tmp_path, capsys):
    write_run(tmp_path / "runs" / "fast", gates={"max_accuracy_drop": 0.03})
    slow = write_run(tmp_path / "runs" / "slow", gates={"max_accuracy_drop": 0.02, "min_speedup": 15.0})
    assert main(["runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    fast_line = next(line for line in out.splitlines() if line.startswith("fast"))
    slow_line = next(line for line in out.splitlines() if line.startswith("slow"))
    assert "student.openvino.int8" in fast_line and "20.00x" in fast_line and "pass" in fast_line
    assert re.search(r"0\.120\s+60\s+pass", fast_line)  # size MB, memory MB alone (55 + 5.2)
    assert "student.openvino.fp32" in slow_line and "11.11x" in slow_line and "FAIL" in slow_line

    results = slow / "stages" / "benchmark" / "results.json"
    saved = json.loads(results.read_text())
    slower = next(r for r in saved["rows"] if r["backend"] == "openvino" and r["precision"] == "int8"
                  and r["batch_size"] == 8)
    slower["latency_ms"].update(p50=2.5, p50_spread=0.1)  # 25% slower, beyond either ± (0.08, 0.1)
    nudged = next(r for r in saved["rows"] if r["backend"] == "openvino" and r["precision"] == "fp32"
                  and r["batch_size"] == 8)
    nudged["latency_ms"].update(p50=3.7)  # 3.6 -> 3.7: within A's ± of 0.144
    results.write_text(json.dumps(saved))
    assert main(["compare", str(tmp_path / "runs" / "fast"), str(slow)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"recommended\s+student\.openvino\.int8\s+student\.openvino\.fp32", out)
    assert re.search(r"gates\s+pass\s+FAIL: min_speedup", out)
    assert re.search(r"memory MB \(alone\)\s+60\s+61", out)  # openvino int8 vs fp32: 55 + 5.2 and 55 + 5.8
    assert re.search(r"student\.openvino\.int8\s+8\s+2\.000 ± 0\.080\s+2\.500 ± 0\.100\s+1\.25x\s+slower by 25%", out)
    assert re.search(r"student\.openvino\.fp32\s+8\s+3\.600 ± 0\.144\s+3\.700 ± 0\.144\s+1\.03x\s+within noise", out)
    assert re.search(r"teacher\.torch\.fp32\s+1\s+10\.00 ± 0\.400\s+10\.00 ± 0\.400\s+1\.00x\s+within noise", out)
    assert main(["compare", str(slow), str(tmp_path / "nope")]) == 2
    assert main(["runs", str(tmp_path / "nope")]) == 2


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless Chromium; installed with apt where we are root on a Debian-like machine, else skipped."""
    found = find_chromium()
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
        if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
            subprocess.run(install, env=env, capture_output=True, timeout=600)
        found = find_chromium()
    if found is None:
        pytest.skip("no headless Chromium here (apt-get install chromium)")
    return found


def test_report_html_draws_every_chart_in_a_headless_browser(chromium, tmp_path):
    run_dir = write_run(tmp_path / "r1", gates={"max_accuracy_drop": 0.03})
    assert main(["--quiet", "report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text()
    # A probe that records, after load, how many images decoded to a real size.
    probe = ("<script>addEventListener('load', () => { const imgs = [...document.images];"
             " document.body.setAttribute('data-drawn', imgs.filter(i => i.complete && i.naturalWidth > 0).length"
             " + '/' + imgs.length); });</script></body>")
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=5000"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    drawn = re.search(r'data-drawn="(\d+)/(\d+)"', dom.stdout)
    assert drawn, dom.stderr[-2000:]
    assert drawn.group(1) == drawn.group(2) == str(len(parse_html(html).images))
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *flags, "--window-size=1280,2400", f"--screenshot={shot}", (run_dir / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    with Image.open(shot) as image:
        assert image.size == (1280, 2400) and sum(1 for n in image.convert("L").histogram() if n) > 50  # not blank


def layout_at(chromium: str, html: str, width: int, tmp_path: Path) -> dict:
    """What a reader's browser lays out at `width` px: page overflow, and each table's scroll box."""
    probe = ("<script>addEventListener('load', () => { const tables = [...document.querySelectorAll('table')].map(t => {"
             " const box = t.closest('.scroll'); const main = document.querySelector('main').getBoundingClientRect();"
             " return box ? {id: t.closest('section').id, scrolls: getComputedStyle(box).overflowX,"
             " wider: box.scrollWidth > box.clientWidth, inside: box.getBoundingClientRect().right <= main.right + 0.5,"
             " bar: box.offsetHeight - box.clientHeight - 2}"
             " : {id: t.closest('section').id, scrolls: 'none'}; });"
             " document.body.setAttribute('data-layout', JSON.stringify({page: document.documentElement.scrollWidth,"
             " view: window.innerWidth, tables: tables})); });</script></body>")
    page = tmp_path / f"layout{width}.html"
    page.write_text(html.replace("</body>", probe))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=5000",
             f"--window-size={width},2000"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'data-layout="([^"]*)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"'))


def test_report_tables_scroll_inside_their_boxes_at_1280_and_390_px(chromium, tmp_path):
    run_dir = write_run(tmp_path / "r1", gates={"max_accuracy_drop": 0.03, "max_latency_ms": {1: 5.0}})
    assert main(["--quiet", "report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text()
    for width in (1280, 390):
        layout = layout_at(chromium, html, width, tmp_path)
        assert layout["page"] <= layout["view"], f"the page itself scrolls sideways at {width} px"
        assert all(t["scrolls"] == "auto" and t["inside"] for t in layout["tables"]), (width, layout["tables"])
        results = next(t for t in layout["tables"] if t["id"] == "results")
        assert results["wider"], f"the full table fits at {width} px: no scrolling to check"
        assert results["bar"] >= 6, "the scrollbar takes room under the table: a reader sees that it scrolls"


def test_the_tradeoff_chart_draws_an_artifact_at_top1_one():
    """A student at 100% top-1: its Wilson interval ends at 100 less a rounding error, not below the point."""
    from compress.reporting.charts import latency_vs_accuracy
    from compress.reporting.uncertainty import top1_interval

    rows = [{**row(model, "torch", "fp32", 1, p50, 1.0, 1.0), "top1_interval": top1_interval(1.0, 60)}
            for model, p50 in (("teacher", 5.0), ("student", 2.0))]
    report = {"pareto_batch": 1, "rows": rows, "headline": None, "pareto": ["student.torch.fp32"], "gate_limits": {}}
    assert latency_vs_accuracy(report)[:8] == b"\x89PNG\r\n\x1a\n"


# --- things a reader notices ----------------------------------------------------------------------

def test_the_header_names_the_command_that_wrote_the_report(tmp_path):
    from compress.core.fileio import read_json
    from compress.stages.contract import StageContext
    from compress.stages.deploy import refresh_report
    from compress.stages.report import ReportStage

    run_dir = write_run(tmp_path / "r1", device=False)
    outputs = {name: entry["outputs"] for name, entry in read_json(run_dir / "run.json")["stages"].items()}
    logged: list[str] = []
    ctx = StageContext("report", None, None, run_dir, run_dir / "stages" / "report", outputs, logged.append)
    ctx.stage_dir.mkdir(parents=True)
    ReportStage().run(ctx)  # what `compress run` does
    md, html = (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()
    assert "Measured 2026-11-23T12:00:00+0000; written by `compress run` (its report stage)." in md
    assert "written by compress run (its report stage)" in html and "compress report" not in md.split("\n## ")[0]
    assert ("Recommended artifact: student.openvino.int8: the fastest student artifact at batch 1 within the "
            "accuracy budget (20.00x the teacher, -3.00 pts top-1)") in logged  # the summary's words on the console

    assert main(["--quiet", "report", str(run_dir)]) == 0
    assert "; rebuilt from saved results by `compress report RUN_DIR`." in (run_dir / "report.md").read_text()
    refresh_report(run_dir)  # what a deploy does once the device results are in
    md = (run_dir / "report.md").read_text()
    assert "; rebuilt from saved results after a deploy added the device results." in md


def test_every_accuracy_difference_to_the_teacher_has_one_sign(tmp_path):
    """Student minus teacher everywhere: a student below the teacher is negative in the summary and the KD table."""
    run_dir = write_run(tmp_path / "r1", device=False)
    assert main(["--quiet", "report", str(run_dir)]) == 0
    md, html = (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()
    assert "(**-3.00 pts**" in md  # the summary: openvino int8 at 95% against the teacher's 98%
    kd = md.split("## What distillation bought")[1].split("\n## ")[0]
    assert "| Δ top-1 vs teacher |" in kd
    assert "| student with KD | 96.00% | 93.6–97.7% | -2.00 pts | 6 |" in kd
    assert "| student alone (baseline) | 93.00% | 89.9–95.3% | -5.00 pts | 5 |" in kd
    for text in (md, html):
        assert "gap to teacher" not in text and "+2.00 pts" not in text and "+5.00 pts" not in text


def parity_entry(backend: str, precision: str, reference: str) -> dict:
    return {"model": "student", "backend": backend, "precision": precision,
            "parity": {"reference": reference, "samples": 360, "top1_agreement": 1.0, "max_abs_error": 1e-6,
                       "mean_abs_error": 1e-7, "min_agreement": 0.999, "passed": True}}


def with_engines(run_dir: Path, engines: list[dict], quantize: dict | None = None) -> Path:
    record = json.loads((run_dir / "run.json").read_text())
    record["stages"]["build"]["outputs"]["engines"] = engines
    if quantize:
        record["stages"]["quantize"] = {"key": "k", "status": "done", "outputs": quantize}
    (run_dir / "run.json").write_text(json.dumps(record))
    return run_dir


def test_the_engine_parity_intro_speaks_of_q_dq_only_in_a_quantized_run(tmp_path):
    plain = with_engines(write_run(tmp_path / "plain", device=False),
                         [parity_entry("onnxruntime", "fp32", "stages/distill/student.pt")])
    assert main(["--quiet", "report", str(plain)]) == 0
    md, html = (plain / "report.md").read_text(), (plain / "report.html").read_text()
    assert "## Engine parity\n\nEach engine against the model it came from, on the same val inputs.\n" in md
    for text in (md, html):
        assert "Q/DQ" not in text.split("Engine parity")[1] and "fake-quantized" not in text

    engines = [parity_entry("onnxruntime", "fp32", "stages/distill/student.pt"),
               parity_entry("onnxruntime", "int8", "stages/quantize/student.int8.pt"),
               parity_entry("openvino", "int8", "stages/distill/student.pt")]
    quantized = with_engines(write_run(tmp_path / "int8", device=False), engines,
                             {"checkpoint": "stages/quantize/student.int8.pt", "mode": "ptq"})
    assert main(["--quiet", "report", str(quantized)]) == 0
    assert ("Each engine against the model it came from, on the same val inputs (int8 built from the Q/DQ ONNX: "
            "against the fake-quantized torch model; int8 the engine quantized itself: against the float torch "
            "model, so the quantization error counts).") in (quantized / "report.md").read_text()


def test_the_device_top1_carries_its_sample_size_and_interval_beside_the_hosts(tmp_path):
    run_dir = write_run(tmp_path / "r1")
    path = run_dir / "stages" / "deploy" / "jetson-orin" / "results.json"
    device = json.loads(path.read_text())
    device["rows"][0]["accuracy"] = {"top1": 246 / 256, "agreement_with_host": 0.98, "samples": 256}  # 96.09%
    path.write_text(json.dumps(device))
    assert main(["--quiet", "report", str(run_dir)]) == 0
    md, html = (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()
    section = md.split("## Device results")[1].split("\n## ")[0]
    assert "| top-1 | top-1 95% CI | samples | host top-1 | host 95% CI | host p50 ms |" in section
    # 246 of 256 on the device; the host's 95.00% on its 360 validation samples.
    assert "| 96.09% | 93.0–97.9% | 256 | 95.00% | 92.2–96.8% | 0.500 |" in section
    assert ("Top-1 on the device is on the labelled val sample the bundle ships (256 samples), the host's on the "
            "validation split (360 samples): compare their 95% intervals (Wilson), not the two numbers.") in section
    assert "93.0–97.9%" in html and "the labelled val sample the bundle ships (256 samples)" in html
