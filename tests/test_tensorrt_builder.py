"""The TensorRT builder's logic against a recording stand-in for `tensorrt` (no GPU here).

What is checked: strongly typed network, the ONNX each precision is built from, the batch
profile, the workspace limit, the timing cache carried from one build to the next, the plain
plan file and the engine.json sidecar; and the trtexec path where only the CLI exists.
"""

from __future__ import annotations

import os
import sys

import pytest
from fake_tensorrt import called, make_fake_tensorrt
from onnx_graphs import cnn_onnx
from test_trtexec import fake_trtexec

from compress.core.fileio import sha256_file
from compress.exporting.fp16 import write_fp16_copy
from deploy.engines import EngineUnavailable, get_engine, read_sidecar
from deploy.engines import tensorrt as trt_engine

GPU = {"name": "NVIDIA Jetson Orin (stand-in)", "compute_capability": "8.7"}


@pytest.fixture
def onnx_files(tmp_path):
    fp32 = cnn_onnx(tmp_path / "student.onnx")
    return {"fp32": fp32, "fp16": write_fp16_copy(fp32, tmp_path / "student.fp16.onnx")}


@pytest.fixture
def fake_trt(monkeypatch):
    trt = make_fake_tensorrt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_engine, "cuda_gpu", lambda: GPU)
    return trt


def build(tmp_path, onnx_files, precision, **options):
    return get_engine("tensorrt").build(onnx_files["fp32"], tmp_path / f"student.tensorrt.{precision}", precision,
                                        sources=onnx_files, min_batch=1, opt_batch=8, max_batch=32,
                                        workspace_mb=256, **options)


def test_fp16_builds_the_fp16_onnx_strongly_typed_with_profile_and_workspace(tmp_path, onnx_files, fake_trt):
    built = build(tmp_path, onnx_files, "fp16")

    assert called(fake_trt, "create_network") == [("create_network", 1 << 0)]  # STRONGLY_TYPED
    assert called(fake_trt, "parse_from_file") == [("parse_from_file", str(onnx_files["fp16"]))]
    assert called(fake_trt, "set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE", 256 << 20)]
    assert called(fake_trt, "set_shape") == [("set_shape", "input", [1, 1, 8, 8], [8, 1, 8, 8], [32, 1, 8, 8])]
    assert len(called(fake_trt, "add_optimization_profile")) == 1
    names = [c[0] for c in fake_trt.calls]
    assert names.index("add_optimization_profile") < names.index("build_serialized_network")

    # A plain plan file, exactly what TensorRT serialized: no header of ours in front of it.
    assert built.artifact.name == "model.plan"
    assert built.artifact.read_bytes() == b"plan of student.fp16.onnx"


def test_the_sidecar_records_version_gpu_precision_shapes_and_source(tmp_path, onnx_files, fake_trt):
    built = build(tmp_path, onnx_files, "fp16")
    sidecar = read_sidecar(built.directory)
    assert sidecar["backend"] == "tensorrt" and sidecar["precision"] == "fp16"
    assert sidecar["tensorrt_version"] == sidecar["version"] == "10.3.0" and sidecar["tensorrt_major"] == 10
    assert sidecar["gpu"] == GPU["name"] and sidecar["compute_capability"] == "8.7"
    assert sidecar["shapes"] == {"min": [1, 1, 8, 8], "opt": [8, 1, 8, 8], "max": [32, 1, 8, 8]}
    assert sidecar["source_onnx"] == str(onnx_files["fp16"])
    assert sidecar["source_onnx_sha256"] == sha256_file(onnx_files["fp16"])
    assert sidecar["artifact_sha256"] == sha256_file(built.artifact)
    assert sidecar["builder"] == "python" and sidecar["strongly_typed"] is True and sidecar["workspace_mb"] == 256


def test_the_timing_cache_is_carried_from_one_build_to_the_next(tmp_path, onnx_files, fake_trt):
    cache = tmp_path / "cache" / "tensorrt.timing.cache"
    build(tmp_path, onnx_files, "fp32", timing_cache=cache)
    assert called(fake_trt, "create_timing_cache") == [("create_timing_cache", b"")]
    assert cache.read_bytes() == b"+tactics"

    fake_trt.calls.clear()
    built = build(tmp_path, onnx_files, "fp16", timing_cache=cache)
    assert called(fake_trt, "create_timing_cache") == [("create_timing_cache", b"+tactics")]
    assert called(fake_trt, "set_timing_cache") == [("set_timing_cache", b"+tactics", False)]
    assert cache.read_bytes() == b"+tactics+tactics"
    assert read_sidecar(built.directory)["timing_cache_reused"] is True


def test_a_timing_cache_from_another_gpu_is_replaced_not_fatal(tmp_path, onnx_files, fake_trt):
    cache = tmp_path / "tensorrt.timing.cache"
    cache.write_bytes(b"other-gpu")
    built = build(tmp_path, onnx_files, "fp32", timing_cache=cache)
    assert called(fake_trt, "create_timing_cache") == [("create_timing_cache", b"other-gpu"), ("create_timing_cache", b"")]
    assert cache.read_bytes() == b"+tactics" and read_sidecar(built.directory)["timing_cache_reused"] is False


def test_int8_needs_the_qdq_onnx_of_a_quantize_stage(tmp_path, onnx_files, fake_trt):
    with pytest.raises(EngineUnavailable, match="add stages.quantize"):
        build(tmp_path, onnx_files, "int8")
    qdq = tmp_path / "student.qdq.onnx"
    qdq.write_bytes(onnx_files["fp32"].read_bytes())
    built = build(tmp_path, {**onnx_files, "qdq": qdq}, "int8")
    assert built.artifact.read_bytes() == b"plan of student.qdq.onnx"
    assert read_sidecar(built.directory)["calibration"] == "explicit Q/DQ in the ONNX"


def test_tensorrt_11_without_precision_flags_builds_the_same_way(tmp_path, onnx_files, monkeypatch):
    trt = make_fake_tensorrt("11.4.1")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_engine, "cuda_gpu", lambda: GPU)
    built = build(tmp_path, onnx_files, "fp16")
    assert not hasattr(trt, "BuilderFlag")  # the stand-in has none, as 11.x: nothing reached for one
    assert read_sidecar(built.directory)["tensorrt_major"] == 11


def test_parser_and_builder_failures_are_clear(tmp_path, onnx_files, monkeypatch):
    monkeypatch.setattr(trt_engine, "cuda_gpu", lambda: GPU)
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt(parse_errors=("node Det: unsupported op",)))
    with pytest.raises(RuntimeError, match="could not parse student.onnx: node Det: unsupported op"):
        build(tmp_path, onnx_files, "fp32")
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt(build_ok=False))
    with pytest.raises(RuntimeError, match="failed to build student.onnx"):
        build(tmp_path, onnx_files, "fp32")
    assert not (tmp_path / "student.tensorrt.fp32" / "model.plan").exists()


def test_trtexec_builds_where_the_python_package_is_missing(tmp_path, onnx_files, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails, as on a bare Jetson
    monkeypatch.setattr(trt_engine, "cuda_gpu", lambda: GPU)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_trtexec(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)

    cache = tmp_path / "timing.cache"
    built = build(tmp_path, onnx_files, "fp16", timing_cache=cache)
    sidecar = read_sidecar(built.directory)
    assert sidecar["builder"] == "trtexec" and sidecar["tensorrt_version"] == "10.3.0"
    assert built.artifact.read_text() == "plan\n"
    assert (tmp_path / "args.txt").read_text().split() == [
        f"--onnx={onnx_files['fp16']}", f"--saveEngine={built.artifact}", "--stronglyTyped",
        "--minShapes=input:1x1x8x8", "--optShapes=input:8x1x8x8", "--maxShapes=input:32x1x8x8",
        "--memPoolSize=workspace:256M", "--skipInference", f"--timingCacheFile={cache}"]


def test_without_a_cuda_gpu_tensorrt_says_why_it_cannot_build_here(monkeypatch, tmp_path, onnx_files):
    monkeypatch.setattr(trt_engine, "cuda_gpu", lambda: None)
    engine = get_engine("tensorrt")
    assert engine.missing() == "no CUDA GPU on this machine" and not engine.available()
    with pytest.raises(EngineUnavailable, match="tensorrt is not installed"):
        build(tmp_path, onnx_files, "fp32")
