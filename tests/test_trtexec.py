"""The trtexec command line and the on-device build_engine.sh.

trtexec cannot run on a machine without a GPU, so a recording stand-in script plays it here.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from deploy.engines.trtexec import build_script, trtexec_args

SHAPES = ((1, 1, 8, 8), (8, 1, 8, 8), (32, 1, 8, 8))


def test_args_build_a_strongly_typed_engine_with_a_batch_profile():
    args = trtexec_args("student.fp16.onnx", "model.plan", "fp16", *SHAPES, workspace_mb=512,
                        timing_cache="timing.cache")
    assert args == ["trtexec", "--onnx=student.fp16.onnx", "--saveEngine=model.plan", "--stronglyTyped",
                    "--minShapes=input:1x1x8x8", "--optShapes=input:8x1x8x8", "--maxShapes=input:32x1x8x8",
                    "--memPoolSize=workspace:512M", "--skipInference", "--timingCacheFile=timing.cache"]
    # The precision lives in the ONNX (FP16 copy, Q/DQ): no builder precision flag, which TensorRT 11 removed.
    for precision in ("fp32", "fp16", "int8"):
        assert not {"--fp16", "--int8", "--best"} & set(trtexec_args("m.onnx", "m.plan", precision, *SHAPES))


def test_args_reject_bad_precision_and_unordered_shapes():
    with pytest.raises(ValueError, match="precision must be one of"):
        trtexec_args("m.onnx", "m.plan", "int4", *SHAPES)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        trtexec_args("m.onnx", "m.plan", "fp32", (8, 1, 8, 8), (1, 1, 8, 8), (32, 1, 8, 8))


def fake_trtexec(folder):
    """Records its arguments and writes the engine file it was asked for, like trtexec does."""
    script = folder / "trtexec"
    script.write_text('#!/usr/bin/env bash\necho "[TensorRT v100300] # trtexec $*"\nprintf "%s\\n" "$@" > args.txt\n'
                      'for a in "$@"; do case "$a" in --saveEngine=*) echo plan > "${a#--saveEngine=}";; esac; done\n')
    script.chmod(0o755)
    return script


def test_build_engine_sh_runs_trtexec_beside_itself(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    script = bundle / "build_engine.sh"
    script.write_text(build_script("model.onnx", "model.plan", "int8", *SHAPES, input_name="images"))
    script.chmod(0o755)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0

    env = {**os.environ, "TRTEXEC": str(fake_trtexec(tmp_path))}
    result = subprocess.run([str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (bundle / "model.plan").read_text() == "plan\n"
    recorded = (bundle / "args.txt").read_text().split()
    assert recorded == trtexec_args("model.onnx", "model.plan", "int8", *SHAPES, input_name="images",
                                    timing_cache="timing.cache")[1:]


def test_build_engine_sh_says_so_when_trtexec_is_missing(tmp_path):
    script = tmp_path / "build_engine.sh"
    script.write_text(build_script("model.onnx", "model.plan", "fp32", *SHAPES))
    env = {**os.environ, "TRTEXEC": str(tmp_path / "nowhere" / "trtexec")}
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert result.returncode == 127 and "trtexec not found" in result.stderr
