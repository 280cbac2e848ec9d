"""A causal LM's TensorRT-LLM target: build prepares the folder and measures float16's agreement here; the device
builds the engine with TensorRT-LLM's LLM API, checks its greedy tokens against torch's and times it.

TensorRT-LLM needs an NVIDIA GPU: on the device side tests/fake_tensorrt_llm stands in for it (the LLM API's
surface, torch float16 arithmetic), put on the device interpreter's PYTHONPATH only. Everything else is real:
the pipeline's stages, the bundle, its checksums, the runner, the release steps.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("onnxruntime_genai")

from compress.cli import main  # noqa: E402
from compress.core.errors import StageFailed  # noqa: E402
from compress.core.fileio import read_json  # noqa: E402
from compress.stages.lm.tensorrt_llm_prep import architecture_of  # noqa: E402
from deploy.runner.generation import greedy_agreement  # noqa: E402
from deploy.runner.trtllm_device import greedy_params  # noqa: E402
from deploy.targets import parse_target  # noqa: E402
from test_deploy import current_release  # noqa: E402

FAKE = Path(__file__).resolve().parent / "fake_tensorrt_llm"
NAME = "student-tensorrt-fp16"


@pytest.fixture(scope="module")
def trt_run(lm_run, tmp_path_factory):
    """The session's tiny LM run, copied, with tensorrt:fp16 added to its build targets and run again (the stages
    before build reused): the run dir."""
    code, run_dir, _, _ = lm_run
    assert code == 0
    copy = tmp_path_factory.mktemp("trt-run") / "run"
    shutil.copytree(run_dir, copy)
    config = yaml.safe_load((copy / "pipeline.yaml").read_text())
    config["stages"]["build"]["targets"].append("tensorrt:fp16")
    config["stages"].pop("deploy")
    (copy / "pipeline.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(copy / "pipeline.yaml"), "--run-dir", str(copy)]) == 0
    return copy


def device_python(folder: Path) -> str:
    """An interpreter for the device that finds the TensorRT-LLM stand-in (as a Jetson finds NVIDIA's wheel)."""
    script = folder / "python-with-tensorrt-llm"
    script.write_text(f'#!/bin/sh\nPYTHONPATH="{FAKE}" exec "{sys.executable}" "$@"\n')
    script.chmod(0o755)
    return str(script)


def test_build_prepares_the_folder_and_measures_float16_here(trt_run):
    record = read_json(trt_run / "run.json")["stages"]
    engine = record["build"]["outputs"]["engines"][NAME]
    folder = trt_run / engine["folder"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tensorrt_llm.json"} <= {p.name for p in folder.iterdir()}
    settings = read_json(folder / "tensorrt_llm.json")
    assert settings["dtype"] == "float16" and settings["max_batch_size"] == 1
    assert settings["architecture"] == "LlamaForCausalLM" and settings["max_seq_len"] >= 12 + 8
    assert engine["built_on"] == "device" and engine["precision"] == "fp16"
    parity = engine["parity"]
    assert parity["prompts"] == 2 and 0.0 <= parity["token_agreement"] <= 1.0
    assert parity["measured_with"] == "torch float16 on this machine's CPU"
    rows = read_json(trt_run / "stages" / "benchmark" / "results.json")["rows"]
    assert NAME not in {r["artifact"] for r in rows}  # nothing to time here: the device times it
    report = (trt_run / "report.md").read_text()
    assert "## Built on the device" in report and f"- {NAME}: TensorRT-LLM float16 engine" in report


def test_the_device_builds_checks_and_times_the_engine(trt_run, tmp_path, capsys):
    device = tmp_path / "device"
    target = f"local:{device}?python={device_python(tmp_path)}"
    assert main(["deploy", str(trt_run), "--target", target, "--runtime", "tensorrt"]) == 0
    out = capsys.readouterr().out
    assert "building the TensorRT fp16 engine on the device with TensorRT-LLM" in out
    manifest = read_json(device / "current" / "manifest.json")
    assert manifest["runtime"] == "tensorrt" and manifest["engine"]["builder"] == "tensorrt_llm"
    assert manifest["generation"]["host_backend"] == "torch"
    expected = read_json(trt_run / "run.json")["stages"]["build"]["outputs"]["engines"][NAME]["parity"]
    assert manifest["min_agreement"] == max(0.0, round(expected["token_agreement"] - 0.05, 6))
    engine = read_json(device / "current" / "engine" / "fake_engine.json")
    assert engine["dtype"] == "float16" and engine["build_config"]["max_batch_size"] == 1
    assert engine["build_config"]["max_seq_len"] == manifest["engine"]["settings"]["max_seq_len"]
    results = read_json(trt_run / "stages" / "deploy" / parse_target(target).slug / "results.json")
    row = results["rows"][0]
    assert row["backend"] == "tensorrt-llm" and row["decode_tokens_per_s"]["1"] > 0
    assert row["accuracy"]["agreement_with_host"] >= manifest["min_agreement"]
    assert results["engine_build"]["builder"] == "tensorrt_llm" and results["engine_build"]["engine_mb"] > 0
    assert (device / "current" / "engine").is_dir()

    done = subprocess.run([device_python(tmp_path), "current/runner.py", "generate", "current", "def main(", "--json"],
                          cwd=device, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert answer["backend"] == "tensorrt-llm" and 1 <= len(answer["tokens"]) <= 8
    other = subprocess.run([device_python(tmp_path), "current/runner.py", "generate", "current", "x", "--backend",
                            "genai"], cwd=device, capture_output=True, text=True, timeout=600)
    assert other.returncode == 1
    assert json.loads(other.stdout)["error"] == ("--backend genai: this release runs a TensorRT-LLM engine; one of "
                                                 "auto, tensorrt-llm")


def test_a_jetson_target_gets_the_tensorrt_llm_folder_where_one_was_built(trt_run, lm_run):
    from deploy import lm_bundle

    record = read_json(trt_run / "run.json")
    assert lm_bundle.choose(trt_run, record, None, None, "tensorrt").name == NAME
    assert lm_bundle.choose(trt_run, record, None, None, "onnxruntime").runtime == "onnxruntime"
    _, plain_run, _, _ = lm_run  # no TensorRT-LLM folder: a Jetson gets the recommended one
    plain = read_json(plain_run / "run.json")
    assert lm_bundle.choose(plain_run, plain, None, None, "tensorrt").runtime == "onnxruntime"


def test_a_device_without_tensorrt_llm_is_refused_and_nothing_changes(trt_run, tmp_path, capsys):
    device = tmp_path / "device"
    assert main(["deploy", str(trt_run), "--target", f"local:{device}", "--artifact",
                 "student-onnxruntime-fp32"]) == 0
    before = current_release(device)
    capsys.readouterr()
    assert main(["deploy", str(trt_run), "--target", f"local:{device}", "--runtime", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tensorrt_llm is not installed" in err[0] and "--runtime onnxruntime" in err[0]
    assert current_release(device) == before


BUILD_ON_THE_DEVICE = """
import json, sys
from pathlib import Path
sys.path.insert(0, "deploy/runner")  # flat modules, as in a release on the device
import generation, trtllm_device
try:
    trtllm_device.build_engine(Path(sys.argv[1]), json.loads(sys.argv[2]))
except generation.GenerationError as error:
    print(error)
"""


def test_an_engine_tensorrt_llm_fails_to_build_is_one_line(trt_run, tmp_path):
    """Whatever the LLM API raises while building (here: a dtype the stand-in refuses) becomes one line naming
    the folder, which the runner prints as its error."""
    folder = trt_run / read_json(trt_run / "run.json")["stages"]["build"]["outputs"]["engines"][NAME]["folder"]
    release = tmp_path / "release"
    shutil.copytree(folder, release / "model")
    manifest = {"model_folder": "model", "engine": {"builder": "tensorrt_llm", "folder": "engine",
                                                    "settings": {"dtype": "bfloat16", "max_seq_len": 64}}}
    done = subprocess.run([device_python(tmp_path), "-c", BUILD_ON_THE_DEVICE, str(release), json.dumps(manifest)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == (f"TensorRT-LLM 0.12.0 could not build the engine of {release / 'model'}: this "
                                   "stand-in builds float16 engines, not bfloat16")
    assert not (release / "engine").exists()


def test_an_architecture_tensorrt_llm_does_not_build_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    with pytest.raises(StageFailed) as error:
        architecture_of(tmp_path)
    assert "architectures ['BertForMaskedLM']: TensorRT-LLM's LLM API builds" in str(error.value)
    assert "drop the tensorrt target" in str(error.value)


def test_a_tensorrt_precision_it_cannot_build_is_refused_naming_the_field(tmp_path, capsys):
    from test_lm_pipeline import lm_config

    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(lm_config(**{"stages.build.targets": ["onnxruntime:fp32", "tensorrt:int4"]})))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "stages.build.targets" in err and "tensorrt:fp16" in err


def test_greedy_params_use_the_releases_spelling_of_the_length():
    @dataclasses.dataclass
    class Current:
        max_tokens: int = 16
        end_id: int = None
        top_k: int = None

    @dataclasses.dataclass
    class Jetson:
        max_new_tokens: int = 16
        end_id: int = None
        top_k: int = None

    assert greedy_params(Current, 8, 0) == Current(max_tokens=8, end_id=0, top_k=1)
    assert greedy_params(Jetson, 8, None) == Jetson(max_new_tokens=8, end_id=-1, top_k=1)


def test_greedy_agreement_counts_missing_positions_as_disagreeing():
    found = greedy_agreement([[1, 2, 3], [4, 5]], [[1, 2, 9], [4, 5, 6]])
    assert found["agreement"] == pytest.approx(4 / 6) and found["identical_prompts"] == 0
    assert found["positions"] == 6 and found["prompts"] == 2
    assert greedy_agreement([[1, 2]], [[1, 2]])["identical_prompts"] == 1
