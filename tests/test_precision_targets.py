"""The precision the hardware is fast at: `openvino:bf16` is its own target, engine.json and results say what the
CPU offers, and `targets: auto` builds every backend x precision installed here for the benchmark to choose from."""

from __future__ import annotations

import json

import pytest

from compress.cli import main
from compress.runner import load_pipeline
from compress.stages.build import auto_targets
from deploy.runner.harness import cpu_features


def test_auto_targets_are_every_backend_and_precision_installed_here(tiny_config, write_pipeline):
    tiny_config["stages"]["build"] = {"targets": "auto"}
    targets = load_pipeline(write_pipeline(tiny_config)).stages["build"].targets
    assert targets == auto_targets()
    assert {"onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32", "openvino:bf16", "openvino:fp16",
            "openvino:int8"} <= set(targets)
    assert not any(t.startswith("tensorrt") for t in targets)  # no CUDA GPU here


def test_a_bf16_engine_computes_in_bf16_where_the_cpu_has_it(tiny_config, write_pipeline, tmp_path):
    tiny_config["stages"]["build"] = {"targets": ["openvino:fp32", "openvino:bf16"]}
    run_dir = tmp_path / "run"
    assert main(["run", str(write_pipeline(tiny_config)), "--run-dir", str(run_dir)]) in (0, 3)
    sidecar = json.loads((run_dir / "stages" / "build" / "student.openvino.bf16" / "engine.json").read_text())
    assert sidecar["precision"] == "bf16" and sidecar["inference_precision_hint"] == "bf16"
    assert sidecar["cpu_features"] == cpu_features() and sidecar["parity"]["min_agreement"] == 0.99
    results = json.loads((run_dir / "stages" / "benchmark" / "results.json").read_text())
    assert results["env"]["cpu_features"] == (", ".join(cpu_features()) or None)
    bf16 = [r for r in results["rows"] if r["precision"] == "bf16"]
    assert bf16 and all(r["backend"] == "openvino" for r in bf16)
    if {"avx512_bf16", "amx_bf16"} & set(cpu_features()):  # computed in what was asked: no "ran as" note
        assert all("computed_in" not in r for r in bf16)
    else:  # the plugin falls back, and the row says what ran
        assert all(r.get("computed_in") == "fp32" for r in bf16)


@pytest.mark.parametrize("targets,words", [(["auto", "onnxruntime"], "auto stands alone"),
                                           (["onnxruntime:bf16"], "onnxruntime builds fp32, int8, not 'bf16'")])
def test_bad_targets_are_one_line(tiny_config, write_pipeline, capsys, targets, words):
    tiny_config["stages"]["build"] = {"targets": targets}
    assert main(["validate", str(write_pipeline(tiny_config))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stages.build.targets" in err[0] and words in err[0], err
