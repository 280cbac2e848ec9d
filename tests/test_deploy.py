"""`compress deploy` against a real sshd on 127.0.0.1, with a temp folder as the device.

sshd runs with throw-away host and user keys on a random free port; the client checks the host
key against a temp known_hosts and never reads ~/.ssh. The "Jetson" is the same loopback device
with a fake /etc/nv_tegra_release (sysroot) and stand-ins for trtexec, tegrastats and nvpmodel
(tests/fake_jetson), since there is no Jetson or GPU here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compress.cli import main
from compress.core.errors import UsageError
from compress.core.fileio import read_json, write_json
from deploy.engines import get_engine
from compress.stages.deploy import make_val_sample
from deploy.bundle import choose, make_bundle, read_run
from deploy.release import deploy_bundle, probe
from deploy.runner import device_bench
from deploy.runner import runner as device_runner
from deploy.targets import DeviceError, SshOptions, parse_target

ROOT = Path(__file__).resolve().parents[1]
FAKE_JETSON = Path(__file__).resolve().parent / "fake_jetson"
SSHD = Path("/usr/sbin/sshd")


# ---------------------------------------------------------------- fixtures


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Sshd:
    """A throw-away sshd on loopback and the client files that go with it."""

    def __init__(self, folder: Path):
        if not SSHD.exists() or not shutil.which("ssh-keygen") or not shutil.which("ssh"):
            pytest.skip("openssh-server/client not installed (.ci/run installs them)")
        self.folder = folder
        self.port = free_port()
        self.user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        for name in ("host_key", "user_key", "other_host_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
        (folder / "authorized_keys").write_text((folder / "user_key.pub").read_text())
        host_key = (folder / "host_key.pub").read_text().split()[:2]
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(host_key)}\n")
        self.ssh_config = folder / "ssh_config"
        self.ssh_config.write_text("")
        config = folder / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
            f"PidFile {folder / 'sshd.pid'}\nAuthorizedKeysFile {folder / 'authorized_keys'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\n"
            "LogLevel ERROR\nMaxStartups 50\nMaxSessions 50\n")
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        self.log = open(folder / "sshd.log", "wb")
        self.process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.process.poll() is not None:
                pytest.skip(f"sshd did not start: {(folder / 'sshd.log').read_text().strip()[-300:]}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.05)

    def target(self, scheme: str, device: Path, **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in {"python": sys.executable, **query}.items())
        return f"{scheme}://{self.user}@127.0.0.1:{self.port}{device}?{params}"

    def client_args(self, known_hosts: Path | None = None) -> list[str]:
        return ["--known-hosts", str(known_hosts or self.known_hosts), "--identity", str(self.folder / "user_key"),
                "--ssh-config", str(self.ssh_config)]

    def options(self) -> SshOptions:
        return SshOptions(str(self.known_hosts), str(self.folder / "user_key"), [], str(self.ssh_config))

    def wrong_known_hosts(self, folder: Path) -> tuple[Path, Path]:
        """(a known_hosts without this server, one that holds another key for it): first contact, and an alarm."""
        empty = folder / "empty_known_hosts"
        empty.write_text("")
        changed = folder / "changed_known_hosts"
        other_key = " ".join((self.folder / "other_host_key.pub").read_text().split()[:2])
        changed.write_text(f"[127.0.0.1]:{self.port} {other_key}\n")
        return empty, changed

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The tiny digits pipeline with an MLP teacher (trains in a blink), run once for the module."""
    import copy

    import yaml

    from conftest import TINY

    config = copy.deepcopy(TINY)
    config["teacher"] = {"model": "mlp", "kwargs": {"hidden": [64]},
                         "train": {"epochs": 3, "batch_size": 64, "lr": 0.01}}
    config["stages"]["benchmark"].update(runs=2, warmup=0)
    folder = tmp_path_factory.mktemp("run")
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["--quiet", "run", str(folder / "pipeline.yaml"), "--run-dir", str(folder / "run")]) == 0
    return folder / "run"


@pytest.fixture(scope="module")
def deployed(sshd, run_dir, tmp_path_factory):
    """A device folder with one release deployed over ssh; tests work on copies of it."""
    device = tmp_path_factory.mktemp("deployed") / "device"
    assert deploy(run_dir, "--target", sshd.target("ssh", device), *sshd.client_args(), quiet=True) == 0
    return device


def copy_of(device: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(device, tmp_path / "device", symlinks=True))


def deploy(run_dir: Path, *args: str, quiet: bool = False) -> int:
    return main([*(["--quiet"] if quiet else []), "deploy", str(run_dir), *args])


def current_release(device: Path) -> str | None:
    link = device / "current"
    return os.readlink(link).split("/")[-1] if link.is_symlink() else None


def releases(device: Path) -> list[str]:
    return sorted(p.name for p in (device / "releases").iterdir() if not p.name.startswith("."))


# ---------------------------------------------------------------- deploy, status, rollback


def test_deploy_over_ssh_benchmarks_on_the_device_then_status_and_rollback(sshd, run_dir, tmp_path, capsys):
    device = tmp_path / "device"
    target = sshd.target("ssh", device)
    assert deploy(run_dir, "--target", target, *sshd.client_args()) == 0
    first = current_release(device)
    assert first and releases(device) == [first]
    assert (device / "current" / "manifest.json").is_file() and (device / "current" / "runner.py").is_file()

    results = read_json(run_dir / "stages" / "deploy" / parse_target(target).slug / "results.json")
    assert results["release"] == first and results["device"]["arch"] and results["device"]["onnxruntime"]
    assert set(results["step_seconds"]) == {"prepare", "upload", "verify", "smoke", "bench", "switch"}
    assert {r["batch_size"] for r in results["rows"]} == {1, 8}
    host_rows = read_json(run_dir / "stages" / "benchmark" / "results.json")["rows"]
    host_top1 = next(r for r in host_rows if r["backend"] == "onnxruntime")["accuracy"]["top1"]
    for shared in ("harness.py", "sessions.py"):  # the host's own harness and sessions, byte for byte
        assert (device / "current" / shared).read_bytes() == (ROOT / "deploy" / "runner" / shared).read_bytes()
    for row in results["rows"]:
        assert row["backend"] == "onnxruntime" and row["latency_ms"]["p50"] > 0 and row["throughput_per_s"] > 0
        # Timed by the host's harness, shipped in the bundle: rounds of fresh loads and the p50's ±.
        assert row["rounds"] == 3 and len(row["latency_ms"]["round_p50s"]) == 3 and row["latency_ms"]["p50_spread"] > 0
        assert row["timer"] == "runner"
        assert row["accuracy"]["agreement_with_host"] == 1.0  # same ONNX, same predictions on the device
        assert abs(row["accuracy"]["top1"] - host_top1) < 0.1 and row["params"] > 0
    report = (run_dir / "report.md").read_text()
    assert "## Device results" in report and parse_target(target).label in report and first in report

    # The bundle's runner classifies raw inputs on the device by itself.
    sample = tmp_path / "digit.npy"
    import numpy as np
    from sklearn.datasets import load_digits

    raw = (load_digits().images[:20] / 16.0).astype(np.float32)[:, None]
    np.save(sample, raw)
    out = subprocess.run([sys.executable, str(device / "current" / "runner.py"), "infer", str(device / "current"),
                          str(sample)], capture_output=True, text=True, check=True)
    predictions = [json.loads(line)["label"] for line in out.stdout.splitlines()]  # one JSON line per input
    pre = read_json(device / "current" / "manifest.json")["preprocessing"]
    with get_engine("onnxruntime").load(run_dir / "stages" / "export" / "student.onnx") as session:
        expected = session.infer((raw - pre["mean"][0]) / pre["std"][0]).argmax(1)
    assert predictions == [str(label) for label in expected]
    assert sum(p == str(digit) for p, digit in zip(predictions, load_digits().target[:20])) >= 12

    capsys.readouterr()
    assert deploy(run_dir, "--target", target, *sshd.client_args()) == 0
    second = current_release(device)
    assert second != first and releases(device) == [first, second]

    assert deploy(run_dir, "--target", target, "--status", *sshd.client_args()) == 0
    out = capsys.readouterr().out
    assert f"* {second}" in out and f"  {first}" in out and "current " + second in out

    assert deploy(run_dir, "--target", target, "--rollback", *sshd.client_args()) == 0
    assert current_release(device) == first and releases(device) == [first, second]
    assert f"rolled back since, current is {first}" in (run_dir / "report.md").read_text()
    assert deploy(run_dir, "--target", target, "--rollback", *sshd.client_args()) == 1  # nothing older
    assert current_release(device) == first


# JetPack 5 ships Python 3.8: the device side (runner.py, bench.py) must run there. .ci/run makes a
# Python 3.8 venv with numpy and onnxruntime when the machine has a 3.8 interpreter and names it here.
DEVICE_PYTHON = os.environ.get("COMPRESS_TEST_DEVICE_PYTHON")


@pytest.mark.skipif(not DEVICE_PYTHON, reason="COMPRESS_TEST_DEVICE_PYTHON not set (.ci/run sets it)")
def test_the_device_side_runs_on_jetpack_5s_python_3_8(sshd, run_dir, tmp_path, capsys):
    version = subprocess.run([DEVICE_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == "3.8", f"{DEVICE_PYTHON} is Python {version}"
    device = tmp_path / "device"
    target = sshd.target("ssh", device, python=DEVICE_PYTHON)
    assert deploy(run_dir, "--target", target, *sshd.client_args(), quiet=True) == 0

    results = read_json(run_dir / "stages" / "deploy" / parse_target(target).slug / "results.json")
    assert results["device"]["python"].startswith("3.8.") and results["current"] == current_release(device)
    for row in results["rows"]:
        assert row["timer"] == "runner" and row["rounds"] == 3 and row["latency_ms"]["p50_spread"] > 0
        assert row["accuracy"]["agreement_with_host"] == 1.0

    import numpy as np
    from sklearn.datasets import load_digits

    sample = tmp_path / "digits.npy"
    np.save(sample, (load_digits().images[:10] / 16.0).astype(np.float32)[:, None])
    out = subprocess.run([DEVICE_PYTHON, str(device / "current" / "runner.py"), "infer", str(device / "current"),
                          str(sample)], capture_output=True, text=True, check=True)
    assert [json.loads(line)["index"] for line in out.stdout.splitlines()] == list(range(10))

    capsys.readouterr()
    assert deploy(run_dir, "--target", target, "--status", *sshd.client_args()) == 0
    assert f"* {current_release(device)}" in capsys.readouterr().out


def test_two_targets_deploy_in_parallel(sshd, run_dir, tmp_path, capsys):
    devices = [tmp_path / "edge-a", tmp_path / "edge-b"]
    targets = [sshd.target("ssh", d) for d in devices]
    args = [a for t in targets for a in ("--target", t)]
    assert deploy(run_dir, *args, *sshd.client_args()) == 0
    out = capsys.readouterr().out
    summary = out[out.index("summary:"):]
    assert all(f"{parse_target(t).label}: ok, release" in summary for t in targets)
    assert current_release(devices[0]) == current_release(devices[1]) is not None  # one bundle, one version
    for target in targets:
        assert (run_dir / "stages" / "deploy" / parse_target(target).slug / "results.json").is_file()


def test_one_failing_device_is_listed_and_the_others_still_deploy(run_dir, tmp_path, capsys):
    good, blocked = tmp_path / "good", tmp_path / "blocked"
    blocked.write_text("a file where the device folder should be")
    assert deploy(run_dir, "--target", f"local:{good}", "--target", f"local:{blocked}") == 1
    captured = capsys.readouterr()
    assert f"local:{good}: ok, release" in captured.out
    assert f"local:{blocked}: FAILED, current unchanged: prepare:" in captured.err
    assert current_release(good) is not None and blocked.read_text().startswith("a file")


# ---------------------------------------------------------------- failures leave `current` as it was


def test_a_tampered_file_fails_the_checksum_and_current_stays(sshd, run_dir, deployed, tmp_path):
    device = copy_of(deployed, tmp_path)
    target_spec = sshd.target("ssh", device)
    before = current_release(device)

    target = parse_target(target_spec, sshd.options())
    record = read_run(run_dir)
    bundle = make_bundle(run_dir, choose(run_dir, record, None, None), tmp_path / "bundles", make_val_sample, 32)
    with open(bundle.directory / "model.onnx", "r+b") as fh:  # one flipped byte after the manifest was written
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(DeviceError, match="checksum mismatch: model.onnx"):
        deploy_bundle(target, bundle, probe(target, "onnxruntime"), lambda message: None)
    assert current_release(device) == before and releases(device) == [before]
    assert not list((device / "releases").glob(".incoming-*"))  # the bad upload was discarded


def test_an_interrupted_upload_leaves_current_intact(sshd, run_dir, deployed, tmp_path, capsys):
    device = copy_of(deployed, tmp_path)
    target = sshd.target("ssh", device)
    before = current_release(device)

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "compress", "--quiet", "deploy", str(run_dir), "--target", target,
               "--bwlimit", "1", *sshd.client_args()]  # 1 KB/s: the upload takes long enough to cut it off
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not list((device / "releases").glob(".incoming-*")) and time.time() < deadline:
            assert process.poll() is None, "deploy ended before its upload could be interrupted"
            time.sleep(0.05)
        time.sleep(0.3)
        assert list((device / "releases").glob(".incoming-*")), "the upload never started"
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the deploying machine dies mid-upload
        process.wait()
    assert current_release(device) == before and releases(device) == [before]
    assert (device / "current" / "manifest.json").is_file()
    capsys.readouterr()
    assert deploy(run_dir, "--target", target, "--status", *sshd.client_args()) == 0
    assert "(incomplete upload, never current)" in capsys.readouterr().out

    assert deploy(run_dir, "--target", target, *sshd.client_args(), quiet=True) == 0  # the next deploy works
    assert current_release(device) != before and len(releases(device)) == 2


def test_an_unknown_or_changed_host_key_is_refused(sshd, run_dir, tmp_path, capsys):
    device = tmp_path / "device"
    empty, changed = sshd.wrong_known_hosts(tmp_path)
    for known_hosts in (empty, changed):
        capsys.readouterr()
        assert deploy(run_dir, "--target", sshd.target("ssh", device), *sshd.client_args(known_hosts)) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        assert "host key" in err and "refusing to connect" in err and str(known_hosts) in err
        assert not device.exists()


def test_an_openvino_engine_deploys_and_runs_on_openvino(run_dir, tmp_path):
    ov = pytest.importorskip("openvino")
    from compress.core.fileio import write_json

    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    engine_dir = run / "stages" / "build" / "student.openvino.fp32"
    ov.save_model(ov.convert_model(str(run / "stages" / "export" / "student.onnx")), str(engine_dir / "model.xml"))
    (engine_dir / "engine.json").write_text('{"backend": "openvino", "artifact": "model.xml"}')
    record = read_json(run / "run.json")
    record["stages"]["build"]["outputs"]["engines"].append(
        {"model": "student", "backend": "openvino", "precision": "fp32", "dir": "stages/build/student.openvino.fp32",
         "artifact": "stages/build/student.openvino.fp32/model.xml"})
    write_json(run / "run.json", record)

    device = tmp_path / "device"
    assert deploy(run, "--target", f"local:{device}", "--runtime", "openvino", quiet=True) == 0
    assert sorted(read_json(device / "current" / "manifest.json")["files"]) == [
        "device_bench.py", "engine.json", "harness.py", "inference.py", "model.bin", "model.xml", "preprocess.py",
        "releases.py", "runner.py", "sessions.py", "val_sample.npz"]
    rows = read_json(run / "stages" / "deploy" / parse_target(f"local:{device}").slug / "results.json")["rows"]
    assert {r["backend"] for r in rows} == {"openvino"}
    assert all(r["accuracy"]["agreement_with_host"] == 1.0 and r["latency_ms"]["p50"] > 0 for r in rows)


def test_a_device_engine_that_disagrees_with_the_host_is_not_switched_to(run_dir, tmp_path, capsys):
    """The device scores the shipped val sample against the host's predictions; below the agreement the bundle
    asks for (gates.min_engine_agreement, else 99%) the deploy stops before the switch and current stays."""
    import onnx
    from onnx import numpy_helper

    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    device = tmp_path / "device"
    assert deploy(run, "--target", f"local:{device}", quiet=True) == 0
    first = current_release(device)
    # the built engine now computes something else than the exported model the host's predictions come from
    artifact = run / "stages" / "build" / "student.onnxruntime.fp32" / "model.onnx"
    model = onnx.load(str(artifact))
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if values.ndim == 2:
            init.CopyFrom(numpy_helper.from_array(values[::-1].copy(), init.name))  # rows of each layer reversed
    onnx.save(model, str(artifact))
    capsys.readouterr()
    assert deploy(run, "--target", f"local:{device}") == 1
    err = capsys.readouterr().err
    assert "agrees with the host's predictions on" in err and "below 99.00%" in err and "not switched" in err, err
    assert current_release(device) == first


# ---------------------------------------------------------------- Jetson


def test_jetson_probe_builds_the_engine_on_the_device_and_samples_power(sshd, run_dir, tmp_path, capsys):
    device = tmp_path / "jetson"
    target = sshd.target("jetson", device, sysroot=str(FAKE_JETSON / "sysroot"), tools=str(FAKE_JETSON / "bin"))
    assert deploy(run_dir, "--target", target, *sshd.client_args()) == 0  # jetson:// defaults to tensorrt
    out = capsys.readouterr().out
    assert "L4T 36.4.3 (JetPack 6.2)" in out and "TensorRT 10.3.0" in out and "power mode MAXN_SUPER" in out

    release = device / "current"
    manifest = read_json(release / "manifest.json")
    assert manifest["runtime"] == "tensorrt" and manifest["precision"] == "fp16"
    assert "model.engine" not in manifest["files"] and "build_engine.sh" in manifest["files"]
    engine = (release / "model.engine").read_text()
    assert engine.startswith("fake-engine") and "--stronglyTyped" in engine and "--saveEngine=model.engine" in engine
    assert "--minShapes=input:1x1x8x8" in engine and "--maxShapes=input:8x1x8x8" in engine

    results = read_json(run_dir / "stages" / "deploy" / parse_target(target).slug / "results.json")
    assert results["device"]["jetpack"] == "6.2" and results["device"]["power_mode"] == {"name": "MAXN_SUPER", "id": 2}
    assert results["engine_build"]["engine_sha256"]
    for row in results["rows"]:
        assert row["backend"] == "tensorrt" and row["timer"] == "trtexec"
        # Three trtexec runs (fresh loads), each inference's latency from --exportTimes through the host's
        # harness: the same statistics and ± as every other row (the stand-in spreads 0.44 to 0.52 ms).
        latency = row["latency_ms"]
        assert row["rounds"] == 3 and len(latency["round_p50s"]) == 3 and latency["runs"] == 600
        assert 0.46 < latency["p50"] < 0.50 and 0 < latency["p50_spread"] < 0.02 and latency["p99"] <= 0.52
        assert row["throughput_per_s"] == pytest.approx(2000.5 * row["batch_size"])  # trtexec's own qps
        assert row["power"]["rail"] == "VDD_IN" and row["power"]["mean_mw"] == 5123 and row["power"]["samples"] >= 1
        assert row["accuracy"]["top1"] is None and "tensorrt" in row["accuracy"]["skipped"]  # no TensorRT Python here
        assert row["energy_mj_per_sample"] == pytest.approx(5123 * latency["p50"] / 1000 / row["batch_size"])
    report = (run_dir / "report.md").read_text()
    b1 = next(r for r in results["rows"] if r["batch_size"] == 1)
    assert f"| 5.12 | {b1['energy_mj_per_sample']:.3f} |" in report  # 5.123 W; mJ per sample at batch 1
    assert "Power: mean of tegrastats' VDD_IN rail" in report
    assert f"{b1['latency_ms']['p50']:.3f} | {b1['latency_ms']['p50_spread']:.3f} |" in report  # the ± is shown


def test_a_jetson_without_trtexec_is_told_to_use_onnxruntime(sshd, run_dir, tmp_path, capsys):
    device = tmp_path / "jetson"
    target = sshd.target("jetson", device, sysroot=str(FAKE_JETSON / "sysroot"))
    assert deploy(run_dir, "--target", target, *sshd.client_args()) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "trtexec not found" in err and "--runtime onnxruntime" in err
    assert not device.exists()
    assert deploy(run_dir, "--target", target, "--runtime", "onnxruntime", *sshd.client_args(), quiet=True) == 0
    assert read_json(device / "current" / "manifest.json")["runtime"] == "onnxruntime"


def test_a_jetson_target_that_is_no_jetson_is_refused(sshd, run_dir, tmp_path, capsys):
    device = tmp_path / "device"
    assert deploy(run_dir, "--target", sshd.target("jetson", device), *sshd.client_args()) == 2
    err = capsys.readouterr().err
    assert "not a Jetson (/etc/nv_tegra_release not found)" in err and len(err.strip().splitlines()) == 1
    assert not device.exists()


# ---------------------------------------------------------------- bad input: one line, exit 2, device untouched


@pytest.mark.parametrize("args, message", [
    (["--target", "ftp://host/x"], "unknown target scheme 'ftp'"),
    (["--target", "local:{device}", "--artifact", "student.nosuch.fp32"], "--artifact: no artifact"),
    (["--target", "local:{device}", "--runtime", "tflite"], "--runtime: unknown runtime 'tflite'"),
    (["--target", "local:{device}", "--runtime", "openvino"], "has no openvino artifact"),
    (["--target", "local:{device}?color=red"], "unknown option 'color'"),
    (["--target", "jetson://root@127.0.0.1:1/x", "--known-hosts", "/nonexistent"], "--known-hosts /nonexistent"),
    (["--target", "local:{device}", "--runtime", "tensorrt"], "trtexec not found"),
    (["--target", "local:{device}", "--target", "local:{device}/"], "the same device folder"),
    (["--target", "ssh://127.0.0.1"], "no folder on the device"),
    (["--target", "ssh://root$(touch x)@host/path"], "user 'root$(touch x)' is not a user name"),
    (["--target", "jetson://nvidia@-oProxyCommand=x/opt"], "host '-oproxycommand=x' is not a host name"),
])
def test_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, capsys, args, message):
    device = tmp_path / "device"
    args = [a.format(device=device) for a in args]
    assert deploy(run_dir, *args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not device.exists()


def test_targets_name_hosts_and_users_ssh_can_take_as_they_are():
    """A user or host name reaches ssh, its config's %r/%h expansions and ProxyCommand shells: names only."""
    for spec, user, host in [("ssh://nvidia@jetson.local/opt/models", "nvidia", "jetson.local"),
                             ("ssh://deploy_bot.2@10.0.0.7:2222/srv/m", "deploy_bot.2", "10.0.0.7"),
                             ("ssh://edge-box-3/srv/m", None, "edge-box-3"),  # a Host of ~/.ssh/config
                             ("ssh://me@[fe80::1]/srv/m", "me", "fe80::1")]:
        target = parse_target(spec)
        assert (target.user, target.host) == (user, host)
    for spec, words in [("ssh://root$(touch x)@host/p", "--target ssh://root$(touch x)@host/p: user 'root$(touch x)' "
                                                        "is not a user name (letters, digits, '_', '.', '-')"),
                        ("ssh://a%20b@host/p", "user 'a b' is not a user name"),
                        ("ssh://-oProxyCommand=x@host/p", "user '-oProxyCommand=x' is not a user name"),
                        ("ssh://me@ho;st/p", "host 'ho;st' is not a host name"),
                        ("ssh://me@ho%60id%60st/p", "is not a host name"),
                        ("jetson://me@-oproxycommand=x/p", "host '-oproxycommand=x' is not a host name")]:
        with pytest.raises(UsageError) as info:
            parse_target(spec)
        assert words in str(info.value), info.value


def test_a_device_python_without_the_runtime_is_refused(run_dir, tmp_path, capsys):
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if not system_python or subprocess.run([system_python, "-c", "import onnxruntime"], capture_output=True).returncode == 0:
        pytest.skip("needs a python3 without onnxruntime")
    device = tmp_path / "device"
    assert deploy(run_dir, "--target", f"local:{device}?python={system_python}") == 2
    err = capsys.readouterr().err
    assert "is not installed for" in err and len(err.strip().splitlines()) == 1
    assert not device.exists()


def test_a_run_dir_without_a_build_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"stages": {"teacher": {"status": "done"}}}')
    assert deploy(run, "--target", f"local:{tmp_path / 'device'}") == 2
    err = capsys.readouterr().err
    assert "stages.build: no finished build stage" in err and len(err.strip().splitlines()) == 1
    assert deploy(tmp_path / "missing", "--target", f"local:{tmp_path / 'device'}") == 2
    assert not (tmp_path / "device").exists()


# ---------------------------------------------------------------- the runner's parsers


def test_runner_reads_jetson_facts():
    l4t = device_runner.parse_l4t((FAKE_JETSON / "sysroot" / "etc" / "nv_tegra_release").read_text())
    assert l4t == {"l4t": "36.4.3", "jetpack": "6.2", "board": "generic"}
    assert device_runner.parse_l4t("# R35 (release), REVISION: 4.1, GCID: 1")["jetpack"] == "5.1.2"
    assert device_runner.parse_l4t("# R99 (release), REVISION: 0.0")["jetpack"] is None
    assert device_runner.decode_trt_version(100300) == "10.3.0"
    assert device_runner.decode_trt_version(8601) == "8.6.1"
    summary = ("[I] === Performance summary ===\n[I] Throughput: 120.699 qps\n[I] H2D Latency: min = 1.5 ms, "
               "max = 1.6 ms, mean = 1.55 ms, median = 1.55 ms, percentile(90%) = 1.56 ms\n[I] Latency: min = 9.11414 ms, "
               "max = 11.7442 ms, mean = 9.81005 ms, median = 9.76404 ms, percentile(90%) = 10.1075 ms, "
               "percentile(95%) = 10.1624 ms, percentile(99%) = 11.4742 ms\n[I] Enqueue Time: min = 0.5 ms, "
               "max = 0.6 ms, mean = 0.53 ms, median = 0.52 ms, percentile(90%) = 0.54 ms\n")
    timing = device_bench.parse_trtexec_timing(summary, batch=4)
    assert timing["latency_ms"]["p50"] == 9.76404 and timing["latency_ms"]["p90"] == 10.1075
    assert timing["latency_ms"]["p99"] == 11.4742 and timing["throughput_per_s"] == pytest.approx(4 * 120.699)


def test_trtexec_rounds_read_each_inference_from_the_trace_or_fall_back_to_the_summary(tmp_path):
    import deploy.runner.harness as harness

    release = tmp_path / "release"
    release.mkdir()
    (release / "model.engine").write_text("fake-engine\n")
    manifest = {"engine": {"file": "model.engine"}, "input": {"name": "input", "shape": [-1, 1, 8, 8]}}
    row = device_bench.time_trtexec_rounds(release, manifest, 2, str(FAKE_JETSON / "bin"), 1, 2, harness)
    assert row["rounds"] == 2 and row["latency_ms"]["runs"] == 400 and row["latency_ms"]["p50_spread"] > 0
    assert row["timer"] == "trtexec" and row["throughput_per_s"] == pytest.approx(2 * 2000.5)

    # A trtexec that writes no --exportTimes trace: the summary's numbers, no ±, and the log says so.
    untraced = tmp_path / "untraced"
    untraced.mkdir()
    (untraced / "trtexec").write_text(
        f"#!{sys.executable}\nimport subprocess, sys\n"
        f"sys.exit(subprocess.call([{str(FAKE_JETSON / 'bin' / 'trtexec')!r}] + "
        "[a for a in sys.argv[1:] if not a.startswith('--exportTimes')]))\n")
    (untraced / "trtexec").chmod(0o755)
    row = device_bench.time_trtexec_rounds(release, manifest, 2, str(untraced), 1, 2, harness)
    assert row["latency_ms"]["p50"] == 0.48 and "p50_spread" not in row["latency_ms"]
    assert device_bench.exported_latencies(tmp_path / "missing.json") == []
    (tmp_path / "junk.json").write_text("[{ \"latencyMs\" : ")
    assert device_bench.exported_latencies(tmp_path / "junk.json") == []


def test_tensorrt_artifacts_come_from_the_export_onnx_and_deferred_builds(tmp_path):
    from deploy.bundle import candidates

    record = {"stages": {
        "export": {"outputs": {"onnx": "stages/export/student.onnx", "onnx_qdq": "stages/export/student.qdq.onnx",
                               "onnx_fp16": "stages/export/student.fp16.onnx"}},
        "build": {"status": "done", "outputs": {
            "engines": [{"model": "student", "backend": "onnxruntime", "precision": "fp32",
                         "dir": "stages/build/ort", "artifact": "stages/build/ort/model.onnx"}],
            "deferred": [{"model": "student", "backend": "tensorrt", "precision": "int8",
                          "reason": "no GPU here", "how": "build on the device"}]}}}}
    (tmp_path / "stages" / "build" / "ort").mkdir(parents=True)
    (tmp_path / "stages" / "build" / "ort" / "model.onnx").write_bytes(b"onnx")
    found = {c.name: c for c in candidates(tmp_path, record)}
    assert set(found) == {"student.onnxruntime.fp32", "student.tensorrt.fp32", "student.tensorrt.fp16",
                          "student.tensorrt.int8"}
    assert found["student.tensorrt.int8"].files == {"model.onnx": tmp_path / "stages/export/student.qdq.onnx"}
    assert found["student.tensorrt.fp16"].files == {"model.onnx": tmp_path / "stages/export/student.fp16.onnx"}
    assert found["student.onnxruntime.fp32"].files == {"model.onnx": tmp_path / "stages/build/ort/model.onnx"}


# ---------------------------------------------------------------- the deploy stage of `compress run`


def with_deploy_stage(run_dir: Path, tmp_path: Path, section: dict, gates: dict | None = None) -> tuple[Path, Path]:
    """A copy of the module's run whose pipeline.yaml gains a deploy stage: the earlier stages come from the cache."""
    import yaml

    folder = tmp_path / "pipeline"
    shutil.copytree(run_dir, folder / "run", symlinks=True)
    config = yaml.safe_load((run_dir.parent / "pipeline.yaml").read_text())
    config["stages"]["deploy"] = section
    if gates is not None:
        config["gates"] = gates
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder / "pipeline.yaml", folder / "run"


def ssh_section(sshd, device: Path, **extra) -> dict:
    return {"targets": [sshd.target("ssh", device)], "known_hosts": str(sshd.known_hosts),
            "identity": str(sshd.folder / "user_key"), "ssh_config": str(sshd.ssh_config), **extra}


def test_compress_run_ends_with_the_deploy_stage_and_the_device_numbers_in_the_report(sshd, run_dir, tmp_path,
                                                                                       capsys):
    device = tmp_path / "device"
    pipeline, run = with_deploy_stage(run_dir, tmp_path, ssh_section(sshd, device))
    assert main(["run", str(pipeline), "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "[report] cached" in out and "[deploy] running" in out and "[deploy] summary:" in out
    first = current_release(device)
    assert first is not None and releases(device) == [first]
    outputs = read_json(run / "run.json")["stages"]["deploy"]["outputs"]
    (deployed,) = outputs["deployed"]
    device_results = read_json(run / deployed["results"])
    assert device_results["release"] == first and device_results["artifact"] == "student.onnxruntime.fp32"
    assert device_results["rows"] and all(r["latency_ms"]["p50"] > 0 for r in device_results["rows"])
    report = (run / "report.md").read_text()
    assert "## Device results" in report and f"127.0.0.1:{sshd.port}" in report and first in report

    # Unchanged: nothing is shipped again.
    assert main(["run", str(pipeline), "--run-dir", str(run)]) == 0
    assert "[deploy] cached" in capsys.readouterr().out and releases(device) == [first]

    # Results a `compress deploy` wrote for another device survive the stage's rerun.
    other = tmp_path / "other-device"
    assert deploy(run, "--target", f"local:{other}", quiet=True) == 0
    other_results = next(p for p in (run / "stages" / "deploy").glob("local-*/results.json"))
    section = ssh_section(sshd, device, val_samples=64)
    pipeline.write_text(pipeline.read_text().replace("ssh_config:", "val_samples: 64\n    ssh_config:"))
    assert main(["--quiet", "run", str(pipeline), "--run-dir", str(run)]) == 0
    assert section["val_samples"] == 64 and len(releases(device)) == 2 and current_release(device) != first
    assert other_results.is_file() and str(other) in (run / "report.md").read_text()


def test_a_run_whose_gates_fail_is_not_deployed(run_dir, tmp_path, capsys):
    device = tmp_path / "device"
    pipeline, run = with_deploy_stage(run_dir, tmp_path, {"targets": [f"local:{device}"]}, gates={"min_speedup": 1e6})
    assert main(["run", str(pipeline), "--run-dir", str(run)]) == 3
    captured = capsys.readouterr()
    assert "[deploy] not deployed: gate(s) failed (min_speedup)" in captured.out and "min_speedup" in captured.err
    assert not device.exists()
    assert read_json(run / "run.json")["stages"]["deploy"]["outputs"]["skipped"] == "gates failed: min_speedup"


def test_an_unknown_artifact_is_a_config_error_before_any_device_is_touched(run_dir, tmp_path, capsys):
    device = tmp_path / "device"
    pipeline, run = with_deploy_stage(run_dir, tmp_path, {"targets": [f"local:{device}"],
                                                          "artifact": "student.tflite.fp32"})
    assert main(["--quiet", "run", str(pipeline), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {pipeline}: stages.deploy.artifact: no artifact 'student.tflite.fp32'")
    assert len(err.splitlines()) == 1 and not device.exists()
    stages = read_json(run / "run.json")["stages"]
    assert stages["report"]["status"] == "done" and stages["deploy"]["status"] == "failed"
    assert (run / "report.html").is_file()  # what was built before is kept


@pytest.mark.parametrize("section, field, message", [
    ({"targets": ["ftp://host/x"]}, "targets", "ftp://host/x: unknown target scheme 'ftp'"),
    ({"targets": []}, "targets", "at least 1 item"),
    ({"targets": ["ssh://127.0.0.1"]}, "targets", "no folder on the device"),
    ({"targets": ["local:/tmp/a", "local:/tmp/a/"]}, "targets", "the same device folder"),
    ({"targets": ["local:/tmp/a"], "runtime": "tflite"}, "runtime", "unknown runtime 'tflite'"),
    ({"targets": ["local:/tmp/a"], "known_hosts": "no_such_known_hosts"}, "known_hosts", "file not found"),
    ({"targets": ["local:/tmp/a"], "ssh_options": ["-oProxyCommand=sh"]}, "ssh_options", "Key=Value"),
    ({"targets": ["local:/tmp/a"], "bwlimit": 0}, "bwlimit", "greater than or equal to 1"),
    ({"targets": ["local:/tmp/a"], "colour": "red"}, "colour", "unknown field"),
])
def test_a_bad_deploy_section_is_one_line_naming_the_field(tiny_config, write_pipeline, capsys, section, field,
                                                           message):
    tiny_config["stages"]["deploy"] = section
    path = write_pipeline(tiny_config)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: stages.deploy.{field}: ") and message in err, err
    assert len(err.splitlines()) == 1


def test_a_deploy_runtime_without_a_built_engine_is_refused(tiny_config, write_pipeline, capsys):
    tiny_config["stages"]["deploy"] = {"targets": ["local:/tmp/a"], "runtime": "openvino"}
    assert main(["validate", str(write_pipeline(tiny_config))]) == 2
    assert ("stages.deploy.runtime: local:/tmp/a runs openvino, but no openvino engine is built: add openvino:fp32 "
            "to stages.build.targets") in capsys.readouterr().err
    tiny_config["stages"]["deploy"] = {"targets": ["jetson://nvidia@orin/opt/models"]}  # built on the device
    assert main(["validate", str(write_pipeline(tiny_config))]) == 0


def test_host_and_device_run_one_session_per_backend():
    """The host's engines load the device runner's sessions: one OpenVINO precision table, one of each class."""
    import deploy.engines.onnxruntime as ort_engine
    import deploy.engines.openvino as ov_engine
    import deploy.engines.tensorrt as trt_engine
    from deploy.runner import sessions

    assert ov_engine.OpenVinoSession is sessions.OpenVinoSession and ov_engine.OPENVINO_PRECISION is sessions.OPENVINO_PRECISION
    assert ort_engine.OnnxRuntimeSession is sessions.OnnxRuntimeSession
    assert trt_engine.TensorRtSession is sessions.TensorRtSession
    sources = [p.read_text() for p in (ROOT / "deploy").rglob("*.py")] + [p.read_text() for p in (ROOT / "compress").rglob("*.py")]
    definitions = [line for text in sources for line in text.splitlines()
                   if line.startswith(("OPENVINO_PRECISION =", "INFERENCE_PRECISION ="))]
    assert len(definitions) == 1 and definitions[0].startswith("OPENVINO_PRECISION = {")


def test_a_run_whose_report_recommends_nothing_says_what_is_deployed_instead(run_dir, tmp_path, capsys):
    run = Path(shutil.copytree(run_dir, tmp_path / "run", symlinks=True))
    record = read_json(run / "run.json")
    for recommended, noted in ((None, True), ("student.onnxruntime.fp32", False)):
        record["stages"]["report"]["outputs"]["recommended"] = recommended
        write_json(run / "run.json", record)
        assert deploy(run, "--target", f"local:{tmp_path / str(noted)}") == 0
        out = capsys.readouterr().out
        assert ("note: the run's report recommends no artifact (none is within its accuracy budget); deploying "
                "student.onnxruntime.fp32, the first built for the runtime" in out) is noted



def test_compress_deploy_refuses_a_run_whose_gates_failed_unless_told(run_dir, tmp_path, capsys):
    """As the pipeline's deploy stage does: exit 3 (the gate's own code), one line naming the gates, no device touched."""
    run = Path(shutil.copytree(run_dir, tmp_path / "run", symlinks=True))
    record = read_json(run / "run.json")
    record["stages"]["report"]["outputs"].update(gates_passed=False, gates=[
        {"gate": "max_accuracy_drop", "limit": 0.03, "value": 0.038, "passed": False, "detail": "3.80 points"},
        {"gate": "max_size_mb", "limit": 1.0, "value": 0.1, "passed": True, "detail": "0.100 MB"},
        {"gate": "min_speedup", "limit": 9.0, "value": 2.0, "passed": False, "detail": "2.00x"}])
    write_json(run / "run.json", record)
    device = tmp_path / "device"
    assert deploy(run, "--target", f"local:{device}") == 3
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {run}: not deployed: gate(s) failed (max_accuracy_drop, min_speedup); "
                   "--allow-failed-gates deploys anyway")
    assert not device.exists()

    assert deploy(run, "--target", f"local:{device}", "--allow-failed-gates") == 0
    assert "note: deploying although gate(s) failed (max_accuracy_drop, min_speedup)" in capsys.readouterr().out
    assert current_release(device) is not None
