"""A detector deployed: `compress run` with stages.deploy and `compress deploy`, to `local:` folders and over a real
sshd on loopback (tests/test_deploy.py's), with the device's own runner.

The tiny detector of tests/test_detection_pipeline.py (one epoch at 96 px) is run once for the session with a deploy
stage to a `local:` device (tests/conftest.py's det_run, which test_detection_pipeline.py checks too). On the
device, before `current` is switched, the runner detects the shipped sample images from their files and matches
its boxes with the host's from the same engine (same class, IoU >= 0.9): at least 0.99 of them for an fp32
engine, build's box agreement less the margin for int8. A bundle whose host boxes or model file were changed is
refused and `current` stays. Nothing here asserts on speed: the machine is shared.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from compress.cli import main
from compress.core.fileio import read_json, sha256_file, write_json
from compress.stages.detection.det_deploy import eval_images
from deploy import detection_bundle
from deploy.bundle import read_run
from deploy.release import deploy_bundle, probe
from deploy.runner.detection import detection_record, letterbox, postprocess
from deploy.runner.sessions import open_model
from deploy.targets import DeviceError, parse_target
from test_deploy import Sshd, current_release, releases
from test_detection_pipeline import det_config

ROOT = Path(__file__).resolve().parents[1]
STEPS = {"prepare", "upload", "verify", "smoke", "bench", "switch"}


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def stages_of(run_dir: Path) -> dict:
    return read_json(run_dir / "run.json")["stages"]


def engine_of(run_dir: Path, name: str) -> dict:
    return detection_bundle.built_engines(read_json(run_dir / "run.json"))[name]


def device_runner(device: Path, *args: str) -> subprocess.CompletedProcess:
    """`python3 current/runner.py ARGS` run in the device folder, as a user of the device would."""
    return subprocess.run([sys.executable, "current/runner.py", *args], cwd=device, capture_output=True, text=True,
                          timeout=600)


def host_detections(run_dir: Path, name: str, path: Path, threshold: float | None = None) -> dict:
    """The engine's boxes for one image file, computed here with the shared letterbox and decode (not the device's
    module): what the device must reproduce."""
    engine = engine_of(run_dir, name)
    post = stages_of(run_dir)["export"]["outputs"]["post"]
    with Image.open(path) as image, open_model(run_dir / engine["artifact"], engine["backend"],
                                               precision=engine["precision"]) as session:
        array, scale = letterbox(image, stages_of(run_dir)["export"]["outputs"]["image_size"])
        predictions = session.infer(array[None])
        size = image.size
    return postprocess(predictions, [scale], [size], post["score_threshold"] if threshold is None else threshold,
                       post["iou_threshold"], post["max_detections"], post["pre_nms_top_k"])[0]


def expected_floor(run_dir: Path, name: str, margin: float = 0.05) -> float:
    engine = engine_of(run_dir, name)
    return 0.99 if engine["precision"] == "fp32" else max(0.0, round(engine["parity"]["agreement"] - margin, 6))


# ---------------------------------------------------------------- compress run ... deploy


def test_compress_run_deploys_the_recommended_engine_checked_on_the_device(det_run):
    code, run_dir, device, log = det_run
    assert code == 0, log[-3000:]
    stages = stages_of(run_dir)
    assert stages["deploy"]["status"] == "done"
    recommended = stages["report"]["outputs"]["recommended"]  # "student openvino:fp32" style
    (deployed,) = stages["deploy"]["outputs"]["deployed"]
    assert deployed["artifact"] == recommended.replace(" ", ".").replace(":", ".")
    assert deployed["release"] == current_release(device)

    manifest = read_json(device / "current" / "manifest.json")
    detection = manifest["detection"]
    assert detection["image_size"] == 96 and detection["post"] == stages["export"]["outputs"]["post"]
    assert detection["class_names"] == stages["teacher"]["outputs"]["class_names"]
    assert detection["min_box_agreement"] == manifest["min_agreement"] == expected_floor(run_dir, deployed["artifact"])
    sample = detection["sample"]
    assert sample["split"] == "test" and len(sample["images"]) == 8  # sample_images' default, the test split's first
    _, files = eval_images(run_dir, 8)
    host = json.loads((device / "current" / sample["host_boxes"]).read_text())["images"]
    for name, source, boxes in zip(sample["images"], files, host):
        assert (device / "current" / name).read_bytes() == source.read_bytes()  # the held-out image, as a file
        expected = host_detections(run_dir, deployed["artifact"], source)
        assert boxes["file"] == name and boxes["labels"] == expected["labels"].tolist()
        np.testing.assert_allclose(boxes["boxes"], expected["boxes"].reshape(-1, 4), atol=1e-4)
    assert sum(len(b["scores"]) for b in host) > 0
    files = set(manifest["files"])
    assert {"detection.py", "detection_device.py", "runner.py", "releases.py", "sessions.py", "preprocess.py",
            "model/engine.json", manifest["model_file"], sample["host_boxes"], *sample["images"]} <= files
    assert "val_sample.npz" not in files and "generation.py" not in files

    results = read_json(run_dir / deployed["results"])
    assert results["release"] == current_release(device) and set(results["step_seconds"]) == STEPS
    (row,) = results["rows"]
    assert row["batch_size"] == 1 and row["rounds"] == 1 and row["latency_ms"]["p50"] > 0
    assert row["end_to_end"]["p50_ms"] > 0 and row["end_to_end"]["images"] == 8
    assert row["accuracy"]["agreement_with_host"] >= detection["min_box_agreement"]
    assert row["accuracy"]["images"] == 8
    assert deployed["box_agreement_with_host"] == row["accuracy"]["agreement_with_host"]
    # the run log says, in one line per device, what the device found and measured
    summary = log[log.index("[deploy] summary:"):]
    assert "boxes agree with the host's on 100.00% of 8 sample images" in summary and "ms file to boxes" in summary
    # the report is written again with the device's results after them, its latency beside this machine's
    report = (run_dir / "report.md").read_text()
    device_part = report[report.index("## On the device"):]
    assert f"release {deployed['release']} ({deployed['artifact']}" in device_part
    assert f"| {deployed['artifact']} | {row['latency_ms']['p50']:.3f} |" in device_part
    assert "100.0% of 8 images" in device_part and "On the device" in (run_dir / "report.html").read_text()
    assert any(d["release"]["release"] == deployed["release"]
               for d in read_json(run_dir / "stages" / "report" / "report.json")["devices"])
    # a deployed release verifies on the device: nothing was written into it (no __pycache__)
    assert device_runner(device, "verify", "current").returncode == 0


def test_an_unchanged_rerun_ships_nothing(det_run):
    code, run_dir, device, _ = det_run
    assert code == 0
    before = releases(device)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", str(run_dir.parent / "pipeline.yaml"), "--run-dir", str(run_dir)]) == 0
    assert "[deploy] cached" in out.getvalue() and releases(device) == before


def test_the_device_detects_objects_in_image_files(det_run, det_data, tmp_path):
    code, run_dir, device, _ = det_run
    assert code == 0
    artifact = read_json(device / "current" / "manifest.json")["artifact"]
    names = stages_of(run_dir)["teacher"]["outputs"]["class_names"]
    sources = sorted((det_data / "images").glob("test_*.png"))[:2]
    inputs = [tmp_path / "a.png", tmp_path / "b.png"]
    for source, target in zip(sources, inputs):
        shutil.copyfile(source, target)

    done = device_runner(device, "infer", "current", *map(str, inputs))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2  # one JSON record per file, in order
    for line, path in zip(lines, inputs):
        record = json.loads(line)
        assert record["file"] == str(path) and record["detections"]
        assert set(record["detections"][0]) == {"box", "score", "label", "name"}
        expected = host_detections(run_dir, artifact, path)
        assert record == detection_record(path, expected, names)  # the host's boxes, to 0.1 px

    out = tmp_path / "drawn"
    cutoff = float(np.median(host_detections(run_dir, artifact, inputs[0])["scores"]))
    done = device_runner(device, "infer", "current", *map(str, inputs), "--out", str(out), "--threshold", str(cutoff))
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert all(d["score"] >= round(cutoff, 4) for r in records for d in r["detections"])
    assert 0 < len(records[0]["detections"]) < len(json.loads(lines[0])["detections"])
    for record, path in zip(records, inputs):
        drawn = Path(record["drawn"])
        assert drawn == out / f"{path.stem}.png"
        with Image.open(drawn) as image, Image.open(path) as original:
            assert image.size == original.size and image.mode == "RGB"

    for args, message in [(["nothing.png"], "nothing.png: not found"),
                          (["boxes.npy"], "not an image file"),
                          ([str(inputs[0]), "--output", "x.npy"], "--output applies to a classifier's release"),
                          ([str(inputs[0]), "--threshold", "2"], "--threshold 2.0: a score between 0 and 1")]:
        refused = device_runner(device, "infer", "current", *args)
        assert refused.returncode == 1 and message in json.loads(refused.stdout.strip())["error"], refused.stdout
    assert device_runner(device, "verify", "current").returncode == 0


# ---------------------------------------------------------------- compress deploy RUN_DIR --target ...


def test_compress_deploy_ships_openvino_fp32_then_int8_then_rolls_back(det_run, tmp_path, capsys):
    code, run_dir, _, _ = det_run
    assert code == 0
    device = tmp_path / "device"
    target = f"local:{device}"
    assert main(["deploy", str(run_dir), "--target", target, "--artifact", "student.openvino.fp32"]) == 0
    fp32 = current_release(device)
    manifest = read_json(device / "current" / "manifest.json")
    assert manifest["runtime"] == "openvino" and manifest["model_file"] == "model/model.xml"
    assert {"model/model.xml", "model/model.bin"} <= set(manifest["files"])
    assert manifest["detection"]["min_box_agreement"] == 0.99
    results = read_json(run_dir / "stages" / "deploy" / parse_target(target).slug / "results.json")
    accuracy = results["rows"][0]["accuracy"]
    assert accuracy["agreement_with_host"] == 1.0 and accuracy["matched"] == accuracy["host_boxes"] > 0
    assert f"{target}: ok, release {fp32}, student.openvino.fp32 on openvino" in capsys.readouterr().out

    assert main(["deploy", str(run_dir), "--target", target, "--artifact", "student.onnxruntime.int8"]) == 0
    int8 = current_release(device)
    manifest = read_json(device / "current" / "manifest.json")
    assert int8 != fp32 and manifest["precision"] == "int8"
    assert manifest["min_agreement"] == expected_floor(run_dir, "student.onnxruntime.int8")
    assert "build's box agreement with torch" in manifest["detection"]["agreement_from"]

    capsys.readouterr()
    assert main(["deploy", str(run_dir), "--target", target, "--status"]) == 0
    out = capsys.readouterr().out
    assert f"* {int8}  student.onnxruntime.int8" in out and f"  {fp32}  student.openvino.fp32" in out
    assert main(["deploy", str(run_dir), "--target", target, "--rollback"]) == 0
    assert current_release(device) == fp32
    assert f"release {int8} (student.onnxruntime.int8" in (run_dir / "report.md").read_text()
    assert f"rolled back since, current is {fp32}" in (run_dir / "report.md").read_text()


def test_compress_deploy_over_ssh_then_infer_on_the_device(det_run, sshd, tmp_path, capsys):
    code, run_dir, _, _ = det_run
    assert code == 0
    device = tmp_path / "device"
    target = sshd.target("ssh", device)
    assert main(["deploy", str(run_dir), "--target", target, *sshd.client_args()]) == 0
    assert f"{parse_target(target).label}: ok, release" in capsys.readouterr().out
    results = read_json(run_dir / "stages" / "deploy" / parse_target(target).slug / "results.json")
    assert results["current"] == current_release(device) and results["device"]["onnxruntime"]
    assert set(results["step_seconds"]) == STEPS and results["rows"][0]["accuracy"]["agreement_with_host"] == 1.0
    sample = read_json(device / "current" / "manifest.json")["detection"]["sample"]["images"][0]
    done = device_runner(device, "infer", "current", f"current/{sample}")
    assert done.returncode == 0 and json.loads(done.stdout)["file"] == f"current/{sample}"


# ---------------------------------------------------------------- a changed bundle is refused, current stays


def bundle_of(run_dir: Path, tmp_path: Path, artifact: str):
    choice = detection_bundle.choose(run_dir, read_run(run_dir), None, artifact)
    return detection_bundle.make_bundle(run_dir, choice, tmp_path / "bundles",
                                        detection_bundle.DetectionSettings(rounds=1), eval_images)


def test_changed_host_boxes_are_refused_by_the_device_and_current_stays(det_run, tmp_path):
    code, run_dir, deployed_device, _ = det_run
    assert code == 0
    device = Path(shutil.copytree(deployed_device, tmp_path / "device", symlinks=True))
    before, kept = current_release(device), releases(device)
    bundle = bundle_of(run_dir, tmp_path, "student.onnxruntime.fp32")
    path = bundle.directory / detection_bundle.HOST_BOXES
    boxes = json.loads(path.read_text())
    for image in boxes["images"]:  # every box moved far off its object: not what the engine says
        image["boxes"] = [[x1 + 500, y1, x2 + 500, y2] for x1, y1, x2, y2 in image["boxes"]]
    path.write_text(json.dumps(boxes))
    bundle.manifest["files"][detection_bundle.HOST_BOXES] = sha256_file(path)  # sealed again: the checksums pass
    write_json(bundle.directory / "manifest.json", bundle.manifest)

    target = parse_target(f"local:{device}")
    with pytest.raises(DeviceError) as info:
        deploy_bundle(target, bundle, probe(target, "onnxruntime"), lambda message: None)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "smoke: boxes on the device agree with the host's on 0.00%" in message
    assert "0/8 sample images identical" in message and "below the 99.00% this bundle requires" in message
    assert current_release(device) == before and releases(device) == kept
    assert not list((device / "releases").glob(".incoming-*"))  # the refused upload is gone


@pytest.mark.parametrize("changed", ["model", "host boxes"])
def test_a_changed_file_fails_the_checksum_and_current_stays(det_run, tmp_path, changed):
    code, run_dir, deployed_device, _ = det_run
    assert code == 0
    device = Path(shutil.copytree(deployed_device, tmp_path / "device", symlinks=True))
    before, kept = current_release(device), releases(device)
    bundle = bundle_of(run_dir, tmp_path, "student.onnxruntime.int8")
    name = bundle.manifest["model_file"] if changed == "model" else detection_bundle.HOST_BOXES
    path = bundle.directory / name
    with open(path, "r+b") as fh:  # one flipped byte after the manifest was written
        fh.seek(path.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(path.stat().st_size // 2)
        fh.write(bytes([byte[0] ^ 0x01]))
    target = parse_target(f"local:{device}")
    with pytest.raises(DeviceError, match=f"checksum mismatch: {name}"):
        deploy_bundle(target, bundle, probe(target, "onnxruntime"), lambda message: None)
    assert current_release(device) == before and releases(device) == kept
    assert not list((device / "releases").glob(".incoming-*"))


# ---------------------------------------------------------------- bad input: one line naming file and field, exit 2


@pytest.mark.parametrize("section, field, message, changes", [
    ({"targets": ["ftp://host/x"]}, "targets", "unknown target scheme 'ftp'", {}),
    ({"targets": ["local:/tmp/a"], "runtime": "tensorrt"}, "runtime", "runs on onnxruntime or openvino, not tensorrt",
     {}),
    ({"targets": ["local:/tmp/a"], "val_samples": 32}, "val_samples", "use sample_images", {}),
    ({"targets": ["local:/tmp/a"], "artifact": "teacher.onnxruntime.int8"}, "artifact",
     "is not built; stages.build builds: teacher.onnxruntime.fp32, teacher.openvino.fp32, student.onnxruntime.fp32",
     {}),
    ({"targets": ["local:/tmp/a"], "artifact": "student.openvino.int8", "runtime": "onnxruntime"}, "runtime",
     "student.openvino.int8 runs on openvino, not onnxruntime", {}),
    ({"targets": ["local:/tmp/a"], "runtime": "openvino"}, "runtime", "no openvino engine is built",
     {"stages.build.targets": ["onnxruntime:fp32"], "stages.build.accuracy_control": None}),
    ({"targets": ["local:/tmp/a"], "min_box_agreement": 1.5}, "min_box_agreement", "less than or equal to 1", {}),
    ({"targets": ["local:/tmp/a"], "sample_images": 0}, "sample_images", "greater than or equal to 1", {}),
    ({"targets": ["local:/tmp/a"], "known_hosts": "no_such_known_hosts"}, "known_hosts", "file not found", {}),
])
def test_a_bad_deploy_section_is_one_line_naming_the_field(tmp_path, det_data, capsys, section, field, message,
                                                           changes):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(det_config(det_data, **changes, **{"stages.deploy": section})))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: stages.deploy.{field}: ") and message in err, err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--artifact", "student.onnxruntime.fp16"],
     "--artifact: no artifact 'student.onnxruntime.fp16' in"),
    (["--runtime", "tensorrt"], "--runtime tensorrt: a detector ships an engine built by stages.build"),
    (["--artifact", "student.openvino.fp32", "--runtime", "onnxruntime"],
     "--artifact student.openvino.fp32 runs on openvino, not --runtime onnxruntime"),
])
def test_compress_deploy_refuses_bad_input_in_one_line(det_run, tmp_path, capsys, args, message):
    code, run_dir, _, _ = det_run
    assert code == 0
    device = tmp_path / "device"
    assert main(["deploy", str(run_dir), "--target", f"local:{device}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    if args[0] == "--artifact" and "fp16" in args[1]:  # the refusal lists what can be deployed
        assert "deployable: teacher.onnxruntime.fp32, teacher.openvino.fp32, student.onnxruntime.fp32" in err
    assert not device.exists()


def test_the_device_runner_stays_python_3_8_and_torch_free():
    """detection_device.py and detection.py run on the device: they import nothing but the runner's siblings, and
    parse as Python 3.8."""
    for name in ("detection_device.py", "detection.py", "runner.py"):
        ast.parse((ROOT / "deploy" / "runner" / name).read_text(), feature_version=(3, 8))
    code = ("import sys; sys.modules['torch'] = None; sys.path.insert(0, 'deploy/runner'); "
            "import runner; sys.modules['runner'] = runner; import detection_device")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert done.returncode == 0, done.stderr
