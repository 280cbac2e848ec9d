"""TensorRT and Triton targets in a real (tiny) pipeline on a machine without a GPU."""

from __future__ import annotations

import pytest

from compress.cli import main
from compress.core.fileio import read_json
from deploy.engines.tensorrt import TensorRTEngine

no_gpu_here = pytest.mark.skipif(TensorRTEngine.available(), reason="TensorRT builds for real on this machine")


def quick(config: dict) -> dict:
    """One epoch each and one batch size: these tests are about the build, not the accuracy."""
    config["teacher"]["train"]["epochs"] = config["stages"]["distill"]["epochs"] = 1
    config["stages"]["benchmark"]["batch_sizes"] = [1]
    return config


def run(path, run_dir) -> int:
    return main(["--quiet", "run", str(path), "--run-dir", str(run_dir)])


@no_gpu_here
def test_tensorrt_is_deferred_to_the_device_and_triton_repository_is_written(tiny_config, write_pipeline, tmp_path):
    tiny_config["stages"]["build"] = {"targets": ["onnxruntime", "tensorrt", "tensorrt:fp16", "triton"],
                                      "tensorrt": {"opt_batch": 4, "max_batch": 16}}
    run_dir = tmp_path / "run"
    assert run(write_pipeline(quick(tiny_config)), run_dir) == 0

    build = read_json(run_dir / "run.json")["stages"]["build"]["outputs"]
    assert [(e["backend"], e["precision"]) for e in build["engines"]] == [("onnxruntime", "fp32")]
    assert [(d["backend"], d["precision"]) for d in build["deferred"]] == [("tensorrt", "fp32"), ("tensorrt", "fp16")]
    fp16 = build["deferred"][1]
    assert fp16["reason"] == "no CUDA GPU on this machine" and fp16["how"].endswith("--runtime tensorrt")
    assert fp16["trtexec"].startswith("trtexec --onnx=model.onnx --saveEngine=model.plan --stronglyTyped")
    assert fp16["shapes"] == {"min": [1, 1, 8, 8], "opt": [4, 1, 8, 8], "max": [16, 1, 8, 8]}
    folder = run_dir / fp16["dir"]
    assert (folder / "model.onnx").read_bytes() == (run_dir / "stages/export/student.fp16.onnx").read_bytes()
    assert "--maxShapes=input:16x1x8x8" in (folder / "build_engine.sh").read_text()

    results = read_json(run_dir / "stages/benchmark/results.json")
    assert {r["backend"] for r in results["rows"]} == {"torch", "onnxruntime"}  # deferred builds are not benchmarked

    report = (run_dir / "report.md").read_text()
    assert "## Deferred builds" in report
    deferred = report.split("## Deferred builds", 1)[1].split("\n## ", 1)[0]
    assert "will be built on the device at deploy time" in deferred
    assert "| student | tensorrt | fp16 | no CUDA GPU on this machine |" in deferred

    lint = read_json(run_dir / "stages/export/trt_lint.json")
    assert lint["clean"] and lint["enforced"] and list(lint["graphs"]) == ["student.onnx"]
    assert lint["fp16_parity"]["top1_agreement"] > 0.98

    config = (run_dir / build["triton"][0]["dir"] / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 16" in config
    assert (run_dir / build["triton"][0]["dir"] / "1" / "model.onnx").is_file()


def test_lint_findings_warn_without_tensorrt_and_stop_the_run_with_it(tiny_config, write_pipeline, tmp_path, capsys):
    tiny_config["stages"]["export"] = {"opset": 21}  # above the TensorRT 10.3 parser's range
    run_dir = tmp_path / "run"
    assert run(write_pipeline(quick(tiny_config)), run_dir) == 0
    lint = read_json(run_dir / "stages/export/trt_lint.json")
    assert not lint["clean"] and not lint["enforced"]
    assert lint["graphs"]["student.onnx"]["findings"][0]["check"] == "opset"

    tiny_config["stages"]["build"]["targets"] = ["onnxruntime", "tensorrt"]
    capsys.readouterr()
    assert run(write_pipeline(tiny_config), run_dir) == 1
    err = capsys.readouterr().err
    assert "student.onnx: TensorRT lint: opset 21 is outside" in err and "tensorrt is a build target" in err


@pytest.mark.parametrize("build, message", [
    ({"targets": ["tensorrt:int8"]}, "stages.build.targets: tensorrt:int8 builds from the Q/DQ ONNX of the quantize"),
    ({"targets": ["tensorrt"], "tensorrt": {"opt_batch": 2, "max_batch": 4}},
     "stages.build.tensorrt.max_batch: 4 is below the benchmark batch sizes [8]"),
    ({"targets": ["tensorrt"], "tensorrt": {"min_batch": 8, "opt_batch": 2}},
     "stages.build.tensorrt: need min_batch <= opt_batch <= max_batch"),
    ({"targets": ["tensorrt:int4"]}, "stages.build.targets: tensorrt builds fp32, fp16, int8, not 'int4'"),
    ({"targets": ["tritonserver"]}, "unknown backend 'tritonserver'; known: onnxruntime, openvino, tensorrt, triton"),
])
def test_bad_tensorrt_config_is_one_line_and_exit_2(tiny_config, write_pipeline, capsys, build, message):
    tiny_config["stages"]["build"] = build
    path = write_pipeline(tiny_config)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
