"""A causal LM deployed: `compress run` with stages.deploy and `compress deploy`, to `local:` folders and over a
real sshd on loopback (tests/test_deploy.py's), with the device's own runner.

The tiny LM of tests/test_lm_pipeline.py is run once for the session (tests/conftest.py's lm_run) with a deploy
stage to a `local:` device.
On the device, before `current` is switched, the runner decodes the shipped prompts greedily and compares
with the host's tokens from the same engine folder: identical for fp32, at least the bundle's agreement
otherwise. A bundle whose host tokens or model file were changed is refused and `current` stays. Nothing
here asserts on speed: the machine is shared.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("onnxruntime_genai")

from compress.cli import main  # noqa: E402
from compress.core.fileio import read_json, write_json  # noqa: E402
from deploy import lm_bundle  # noqa: E402
from deploy.bundle import read_run  # noqa: E402
from deploy.release import deploy_bundle, probe  # noqa: E402
from deploy.runner.generation import GreedyGenerator, load_tokenizer  # noqa: E402
from deploy.targets import DeviceError, parse_target  # noqa: E402
from test_deploy import Sshd, current_release, releases  # noqa: E402
from test_lm_pipeline import lm_config  # noqa: E402

STEPS = {"prepare", "upload", "verify", "smoke", "bench", "switch"}


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def engine_folder(run_dir: Path, name: str) -> Path:
    return run_dir / read_json(run_dir / "run.json")["stages"]["build"]["outputs"]["engines"][name]["folder"]


def device_runner(device: Path, *args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    """`python3 current/runner.py ARGS` run in the device folder, as a user of the device would."""
    return subprocess.run([python, "current/runner.py", *args], cwd=device, capture_output=True, text=True,
                          timeout=600)


def host_continuation(folder: Path, prompt: str, new_tokens: int) -> str:
    tokenizer = load_tokenizer(folder)
    return tokenizer.decode(GreedyGenerator(str(folder), backend="auto").generate(tokenizer.encode(prompt), new_tokens))


def expected_floor(run_dir: Path, name: str, margin: float = 0.05) -> float:
    engine = read_json(run_dir / "run.json")["stages"]["build"]["outputs"]["engines"][name]
    return 1.0 if engine["precision"] == "fp32" else max(0.0, round(engine["parity"]["token_agreement"] - margin, 6))


# ---------------------------------------------------------------- compress run ... deploy


def test_compress_run_deploys_the_recommended_engine_checked_on_the_device(lm_run):
    code, run_dir, device, log = lm_run
    assert code == 0, log[-2000:]
    stages = read_json(run_dir / "run.json")["stages"]
    assert stages["deploy"]["status"] == "done"
    recommended = stages["report"]["outputs"]["recommended"]
    (deployed,) = stages["deploy"]["outputs"]["deployed"]
    assert deployed["artifact"] == recommended and deployed["release"] == current_release(device)

    manifest = read_json(device / "current" / "manifest.json")
    generation = manifest["generation"]
    assert generation["prompts"] == stages["export"]["outputs"]["prompts"]
    assert generation["max_new_tokens"] == 8  # stages.export.new_tokens: what build measured its agreement at
    folder = engine_folder(run_dir, recommended)
    host = GreedyGenerator(str(folder), backend="auto")
    assert generation["host_tokens"] == [host.generate(p, 8) for p in generation["prompts"]]
    assert generation["min_agreement"] == manifest["min_agreement"] == expected_floor(run_dir, recommended)
    files = set(manifest["files"])
    assert {"model/genai_config.json", "model/model.onnx", "model/tokenizer.json", "generation.py", "lm_device.py",
            "runner.py", "releases.py", "sessions.py"} <= files
    assert "val_sample.npz" not in files and "preprocess_text.py" not in files

    results = read_json(run_dir / deployed["results"])
    assert results["release"] == current_release(device) and set(results["step_seconds"]) == STEPS
    (row,) = results["rows"]
    assert row["timer"] == "time_generation" and row["batch_size"] == 1 and row["rounds"] == 1
    assert row["tokens_per_s"] > 0 and row["new_tokens"] >= 1 and row["time_to_first_token_s"] > 0
    assert row["accuracy"]["agreement_with_host"] >= generation["min_agreement"]
    assert row["accuracy"]["prompts"] == 2 and deployed["tokens_per_s"] == row["tokens_per_s"]
    # the run log says what the device found and measured
    assert "[deploy] local:" in log and "greedy tokens agree with the host's on" in log
    assert "tokens/s at batch 1" in log[log.index("[deploy] summary:"):]
    # the report is written again with the device's results after them, its tokens/s beside this machine's
    report = (run_dir / "report.md").read_text()
    device_part = report[report.index("## On the device"):]
    assert f"release {deployed['release']} ({recommended}" in device_part
    tps = row["decode_tokens_per_s"]["1"]
    assert f"| {recommended} | {row['backend']} | {tps} |" in device_part and "(2/2 prompts identical)" in device_part
    assert "On the device" in (run_dir / "report.html").read_text()
    assert any(d["release"]["release"] == deployed["release"]
               for d in read_json(run_dir / "stages" / "report" / "report.json")["devices"])
    # a deployed release verifies on the device: nothing was written into it (no __pycache__)
    assert device_runner(device, "verify", "current").returncode == 0


def test_an_unchanged_rerun_ships_nothing(lm_run, tmp_path):
    code, run_dir, device, _ = lm_run
    assert code == 0
    before = releases(device)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", str(run_dir.parent / "pipeline.yaml"), "--run-dir", str(run_dir)]) == 0
    assert "[deploy] cached" in out.getvalue() and releases(device) == before


def test_the_device_generates_text_from_a_prompt(lm_run):
    code, run_dir, device, _ = lm_run
    assert code == 0
    manifest = read_json(device / "current" / "manifest.json")
    folder = engine_folder(run_dir, manifest["artifact"])
    done = device_runner(device, "generate", "current", "def main(", "--max-new-tokens", "6")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == host_continuation(folder, "def main(", 6) + "\n"  # the same greedy text as the host's

    done = device_runner(device, "generate", "current", "import os\n", "--json")
    answer = json.loads(done.stdout)
    assert answer["prompt_tokens"] > 0 and 1 <= len(answer["tokens"]) <= 8  # the bundle's max_new_tokens
    assert answer["tokenizer"] == "tokenizers" and answer["text"] == load_tokenizer(folder).decode(answer["tokens"])
    # a device without onnxruntime-genai runs the plain ONNX Runtime loop over the KV cache
    plain = device_runner(device, "generate", "current", "import os\n", "--json", "--backend", "onnxruntime")
    assert plain.returncode == 0 and json.loads(plain.stdout)["backend"] == "onnxruntime"
    openvino = device_runner(device, "generate", "current", "import os\n", "--backend", "openvino-genai")
    assert openvino.returncode == 1
    assert json.loads(openvino.stdout)["error"] == ("--backend openvino-genai: this release ships an "
                                                    "onnxruntime-genai folder; one of auto, genai, onnxruntime")

    empty = device_runner(device, "generate", "current", "")
    assert empty.returncode == 1 and "empty" in json.loads(empty.stdout.strip())["error"]
    classify = device_runner(device, "infer", "current", "texts.txt")
    assert classify.returncode == 1 and "generates text" in json.loads(classify.stdout)["error"]
    assert device_runner(device, "verify", "current").returncode == 0


# ---------------------------------------------------------------- compress deploy RUN_DIR --target ...


def test_compress_deploy_ships_fp32_with_identical_tokens_then_int4_then_rolls_back(lm_run, tmp_path, capsys):
    code, run_dir, _, _ = lm_run
    assert code == 0
    device = tmp_path / "device"
    target = f"local:{device}"
    assert main(["deploy", str(run_dir), "--target", target, "--artifact", "student-onnxruntime-fp32"]) == 0
    fp32 = current_release(device)
    manifest = read_json(device / "current" / "manifest.json")
    assert manifest["precision"] == "fp32" and manifest["generation"]["min_agreement"] == 1.0
    assert manifest["generation"]["agreement_from"] == "identical tokens, as an fp32 folder must give"
    results = read_json(run_dir / "stages" / "deploy" / parse_target(target).slug / "results.json")
    accuracy = results["rows"][0]["accuracy"]
    assert accuracy["agreement_with_host"] == 1.0 and accuracy["identical_prompts"] == accuracy["prompts"] == 2
    out = capsys.readouterr().out
    assert "greedy tokens agree with the host's on 100.00% of positions (2/2 prompts identical" in out

    assert main(["deploy", str(run_dir), "--target", target, "--artifact", "student-onnxruntime-int4"]) == 0
    int4 = current_release(device)
    manifest = read_json(device / "current" / "manifest.json")
    assert int4 != fp32 and manifest["precision"] == "int4"
    assert manifest["min_agreement"] == expected_floor(run_dir, "student-onnxruntime-int4")
    assert "build's agreement with torch" in manifest["generation"]["agreement_from"]

    capsys.readouterr()
    assert main(["deploy", str(run_dir), "--target", target, "--status"]) == 0
    out = capsys.readouterr().out
    assert f"* {int4}  student-onnxruntime-int4" in out and f"  {fp32}  student-onnxruntime-fp32" in out
    assert main(["deploy", str(run_dir), "--target", target, "--rollback"]) == 0
    assert current_release(device) == fp32
    assert f"rolled back since, current is {fp32}" in (run_dir / "report.md").read_text()


def test_unreadable_device_results_are_one_line_and_the_report_stays(lm_run, tmp_path, capsys):
    from compress.stages.lm.lm_report import device_lines
    from compress.reporting.task_report import refresh_report

    code, run_dir, _, _ = lm_run
    assert code == 0
    copy = tmp_path / "run"
    shutil.copytree(run_dir / "stages" / "report", copy / "stages" / "report")
    shutil.copytree(run_dir / "stages" / "deploy", copy / "stages" / "deploy", ignore=shutil.ignore_patterns("bundles"))
    before = (copy / "stages" / "report" / "report.md").read_text()
    broken = copy / "stages" / "deploy" / "local-broken" / "results.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    capsys.readouterr()
    assert refresh_report(copy, device_lines) is False
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"{broken}: unreadable device results" in err, err
    assert (copy / "stages" / "report" / "report.md").read_text() == before
    assert refresh_report(tmp_path / "no-run", device_lines) is False  # a run without a report: nothing written


def test_compress_deploy_over_ssh_then_generate_on_the_device(lm_run, sshd, tmp_path, capsys):
    code, run_dir, _, _ = lm_run
    assert code == 0
    device = tmp_path / "device"
    target = sshd.target("ssh", device)
    assert main(["deploy", str(run_dir), "--target", target, *sshd.client_args()]) == 0
    out = capsys.readouterr().out
    assert f"{parse_target(target).label}: ok, release" in out and "tokens/s at batch 1" in out
    results = read_json(run_dir / "stages" / "deploy" / parse_target(target).slug / "results.json")
    assert results["current"] == current_release(device) and results["device"]["onnxruntime"]
    assert set(results["step_seconds"]) == STEPS and results["rows"][0]["tokens_per_s"] > 0
    done = device_runner(device, "generate", "current", "class A", "--max-new-tokens", "4")
    assert done.returncode == 0 and done.stdout.endswith("\n")


# JetPack 5's Python 3.8 with numpy, onnxruntime and tokenizers, no onnxruntime-genai (.ci/run names it).
DEVICE_PYTHON = os.environ.get("COMPRESS_TEST_DEVICE_PYTHON")


@pytest.mark.skipif(not DEVICE_PYTHON, reason="COMPRESS_TEST_DEVICE_PYTHON not set (.ci/run sets it)")
def test_an_fp32_folder_deploys_to_python_3_8_and_decodes_the_hosts_tokens(lm_run, sshd, tmp_path, capsys):
    """On a Python 3.8 device without onnxruntime-genai, the plain ONNX Runtime loop over the KV cache gives the
    host's greedy tokens for the shipped prompts (fp32: identical), and `generate` the host's text."""
    code, run_dir, _, _ = lm_run
    assert code == 0
    device = tmp_path / "device"
    target = sshd.target("ssh", device, python=DEVICE_PYTHON)
    assert main(["deploy", str(run_dir), "--target", target, "--artifact", "student-onnxruntime-fp32",
                 *sshd.client_args()]) == 0, "".join(capsys.readouterr())
    results = read_json(run_dir / "stages" / "deploy" / parse_target(target).slug / "results.json")
    assert results["device"]["python"].startswith("3.8.") and results["current"] == current_release(device)
    (row,) = results["rows"]
    assert row["backend"] == "onnxruntime" and row["tokens_per_s"] > 0
    assert row["accuracy"]["agreement_with_host"] == 1.0 and row["accuracy"]["identical_prompts"] == 2
    folder = engine_folder(run_dir, "student-onnxruntime-fp32")
    done = device_runner(device, "generate", "current", "def main(", "--max-new-tokens", "6", python=DEVICE_PYTHON)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == host_continuation(folder, "def main(", 6) + "\n"

    # int4 with a quantized embedding table needs an operator ONNX Runtime 1.19 lacks: refused in one line that
    # says how to build one it runs, and the fp32 release stays current
    fp32 = current_release(device)
    capsys.readouterr()
    assert main(["deploy", str(run_dir), "--target", target, "--artifact", "student-onnxruntime-int4",
                 *sshd.client_args()]) == 1
    err = capsys.readouterr().err
    assert "onnxruntime 1.19" in err and "stages.build.quantize_embeddings: false" in err, err
    assert current_release(device) == fp32


# ---------------------------------------------------------------- a changed bundle is refused, current stays


def bundle_of(run_dir: Path, tmp_path: Path, artifact: str):
    record = read_run(run_dir)
    choice = lm_bundle.choose(run_dir, record, None, artifact)
    return lm_bundle.make_bundle(run_dir, choice, tmp_path / "bundles", lm_bundle.GenerationSettings(rounds=1))


def test_changed_host_tokens_are_refused_by_the_device_and_current_stays(lm_run, tmp_path):
    code, run_dir, deployed_device, _ = lm_run
    assert code == 0
    device = Path(shutil.copytree(deployed_device, tmp_path / "device", symlinks=True))
    before, kept = current_release(device), releases(device)
    bundle = bundle_of(run_dir, tmp_path, "student-onnxruntime-fp32")
    generation = bundle.manifest["generation"]
    vocab = GreedyGenerator(str(bundle.directory / "model"), backend="onnxruntime").vocab_size or 320
    generation["host_tokens"][0][0] = (generation["host_tokens"][0][0] + 1) % vocab  # not what the model says
    write_json(bundle.directory / "manifest.json", bundle.manifest)

    target = parse_target(f"local:{device}")
    with pytest.raises(DeviceError) as info:
        deploy_bundle(target, bundle, probe(target, "onnxruntime", generation=True), lambda message: None)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "smoke: greedy tokens on the device agree with the host's on" in message
    assert "(1/2 prompts identical" in message and "below the 100.00% this bundle requires" in message
    assert current_release(device) == before and releases(device) == kept
    assert not list((device / "releases").glob(".incoming-*"))  # the refused upload is gone


def test_a_changed_model_file_fails_the_checksum_and_current_stays(lm_run, tmp_path):
    code, run_dir, deployed_device, _ = lm_run
    assert code == 0
    device = Path(shutil.copytree(deployed_device, tmp_path / "device", symlinks=True))
    before, kept = current_release(device), releases(device)
    bundle = bundle_of(run_dir, tmp_path, "student-onnxruntime-int4")
    weights = max((p for p in (bundle.directory / "model").iterdir() if p.name.startswith("model.onnx")),
                  key=lambda p: p.stat().st_size)
    with open(weights, "r+b") as fh:  # one flipped byte after the manifest was written
        fh.seek(weights.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(weights.stat().st_size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    target = parse_target(f"local:{device}")
    with pytest.raises(DeviceError, match=f"checksum mismatch: model/{weights.name}"):
        deploy_bundle(target, bundle, probe(target, "onnxruntime", generation=True), lambda message: None)
    assert current_release(device) == before and releases(device) == kept
    assert not list((device / "releases").glob(".incoming-*"))


# ---------------------------------------------------------------- bad input: one line naming file and field, exit 2


@pytest.mark.parametrize("section, field, message", [
    ({"targets": ["ftp://host/x"]}, "targets", "unknown target scheme 'ftp'"),
    ({"targets": []}, "targets", "at least 1 item"),
    ({"targets": ["ssh://root$(touch x)@host/p"]}, "targets", "is not a user name"),
    ({"targets": ["local:/tmp/a"], "runtime": "triton"}, "runtime", "(tensorrt), not triton"),
    ({"targets": ["local:/tmp/a"], "runtime": "tensorrt"}, "runtime", "stages.build builds no tensorrt engine"),
    ({"targets": ["local:/tmp/a"], "runtime": "openvino"}, "runtime", "stages.build builds no openvino engine"),
    ({"targets": ["local:/tmp/a"], "val_samples": 32}, "val_samples", "not a val sample"),
    ({"targets": ["local:/tmp/a"], "artifact": "student-onnxruntime-int8"}, "artifact", "is not built"),
    ({"targets": ["local:/tmp/a"], "min_agreement": 1.5}, "min_agreement", "less than or equal to 1"),
    ({"targets": ["local:/tmp/a"], "max_new_tokens": 0}, "max_new_tokens", "greater than or equal to 1"),
    ({"targets": ["local:/tmp/a"], "known_hosts": "no_such_known_hosts"}, "known_hosts", "file not found"),
])
def test_a_bad_deploy_section_is_one_line_naming_the_field(tmp_path, capsys, section, field, message):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(lm_config(**{"stages.deploy": section})))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: stages.deploy.{field}: ") and message in err, err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--artifact", "student-onnxruntime-int2"], "--artifact: no artifact 'student-onnxruntime-int2'"),
    (["--runtime", "openvino"], "--runtime openvino: the build made no openvino engine"),
    (["--runtime", "tensorrt"], "--runtime tensorrt: the build made no tensorrt engine"),
    (["--runtime", "triton"], "--runtime triton: a causal LM ships an onnxruntime-genai folder"),
])
def test_compress_deploy_refuses_bad_input_in_one_line(lm_run, tmp_path, capsys, args, message):
    code, run_dir, _, _ = lm_run
    assert code == 0
    device = tmp_path / "device"
    assert main(["deploy", str(run_dir), "--target", f"local:{device}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not device.exists()


def test_the_device_runner_stays_python_3_8_and_torch_free():
    """lm_device.py and generation.py run on the device: they import nothing but the runner's siblings."""
    code = ("import sys; sys.modules['torch'] = None; sys.path.insert(0, 'deploy/runner'); "
            "import runner; sys.modules['runner'] = runner; import lm_device")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert done.returncode == 0, done.stderr
