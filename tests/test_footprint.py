"""Memory of one artifact alone in a fresh process (compress/footprint.py), with real runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.cli import main
from compress.measuring.footprint import describe, measure_footprint

WIDTH = 1024


def matmul_onnx(path: Path, outputs: int) -> Path:
    """Y = X @ W with W of WIDTH x outputs float32: the weights set the memory the model needs."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((WIDTH, outputs)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", outputs])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("footprint")
    return {"small": matmul_onnx(folder / "small.onnx", 16),  # 64 KB of weights
            "big": matmul_onnx(folder / "big.onnx", 8192)}  # 32 MB of weights


def test_an_onnx_model_alone_is_measured_without_torch_and_its_weights_show(models):
    small = measure_footprint(models["small"], "onnxruntime", (WIDTH,), 4, threads=1)
    big = measure_footprint(models["big"], "onnxruntime", (WIDTH,), 4, threads=1)
    for footprint in (small, big):
        assert "error" not in footprint, footprint
        assert footprint["torch_imported"] is False and footprint["batch_size"] == 4
        assert footprint["runtime_mb"] < 200  # ONNX Runtime and numpy only: torch alone is several hundred MB
        assert footprint["peak_mb"] >= footprint["runtime_mb"]
    assert big["model_mb"] >= 30  # the 32 MB of weights are resident once loaded
    assert big["model_mb"] - small["model_mb"] >= 25
    assert abs(big["runtime_mb"] - small["runtime_mb"]) < 10  # the runtime costs the same for both
    assert describe(big).startswith(f"{big['peak_mb']:.0f} MB peak resident, alone in a fresh process (runtime ")


def test_a_package_named_compress_in_the_working_directory_does_not_shadow_this_one(models, tmp_path, monkeypatch):
    (tmp_path / "compress").mkdir()
    (tmp_path / "compress" / "__init__.py").write_text("raise ImportError('the wrong compress package')\n")
    monkeypatch.chdir(tmp_path)
    footprint = measure_footprint(models["small"], "onnxruntime", (WIDTH,), 1)
    assert "error" not in footprint, footprint


def test_a_relative_path_is_taken_from_the_callers_working_directory(models, monkeypatch):
    monkeypatch.chdir(models["small"].parent)
    footprint = measure_footprint(Path("small.onnx"), "onnxruntime", (WIDTH,), 1)
    assert "error" not in footprint, footprint


def test_a_child_that_fails_reports_its_last_line_as_the_error(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    footprint = measure_footprint(junk, "onnxruntime", (WIDTH,), 1)
    assert set(footprint) == {"error"} and footprint["error"]
    assert describe(footprint) == f"not measured: {footprint['error']}"


def test_benchmark_command_prints_the_memory_alone_unless_told_not_to(models, tmp_path, capsys):
    out_json = tmp_path / "rows.json"
    args = ["benchmark", str(models["big"]), "--shape", str(WIDTH), "--batch", "1,2", "--runs", "3",
            "--min-seconds", "0", "--rounds", "1", "--threads", "1"]
    assert main([*args, "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    memory_lines = [line for line in out.splitlines() if line.startswith("memory: ")]
    assert len(memory_lines) == 1 and "MB peak resident, alone" in memory_lines[0] and "at batch 2)" in memory_lines[0]
    saved = json.loads(out_json.read_text())
    assert saved["memory"]["model_mb"] >= 30 and all(r["memory"] == saved["memory"] for r in saved["rows"])
    header = out.splitlines()[0].split("  ")
    assert "memory MB" in [h.strip() for h in header if h.strip()]

    assert main([*args, "--no-memory", "--json", str(out_json)]) == 0
    assert "memory: " not in capsys.readouterr().out
    saved = json.loads(out_json.read_text())
    assert saved["memory"] is None and all("memory" not in r for r in saved["rows"])
