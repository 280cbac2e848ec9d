"""Deploy faults a careful user or an unlucky operator meets, against the loopback sshd of test_deploy.

Files changed between verify and the switch, two deploys to one device at once, rollbacks after a
rollback, a switch that fails, key files in odd folders, an upload that fails without a word, a
release checked again on the device, a missing interpreter, host keys unknown or changed, and the
releases and bundles kept.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compress.cli import main
from compress.core.fileio import read_json
from compress.stages.deploy import DeployConfig, make_val_sample
from deploy.bundle import choose, make_bundle, read_run
from deploy.release import deploy_bundle, probe
from deploy.targets import DeviceError, parse_target
from test_deploy import ROOT, copy_of, current_release, deploy, deployed, releases, run_dir, sshd  # noqa: F401


def incoming(device: Path) -> list[Path]:
    return sorted((device / "releases").glob(".incoming-*"))


def status_of(run: Path, target: str, sshd, capsys) -> str:
    capsys.readouterr()
    assert deploy(run, "--target", target, "--status", *sshd.client_args()) == 0
    return capsys.readouterr().out


# ---------------------------------------------------------------- 8: checked again in the step that switches


@pytest.mark.parametrize("change, message", [("flip", "checksum mismatch: model.onnx"),
                                             ("add", "checksum: unexpected file extra.py")])
def test_a_file_changed_after_verify_is_refused_by_the_switch(sshd, run_dir, deployed, tmp_path, change, message):
    device = copy_of(deployed, tmp_path)
    before = current_release(device)
    target = parse_target(sshd.target("ssh", device), sshd.options())
    bundle = make_bundle(run_dir, choose(run_dir, read_run(run_dir), None, None), tmp_path / "bundles",
                         make_val_sample, 32)
    ssh_runner = target.runner

    def runner(*args, **kwargs):
        if args[0] == "activate":  # verified, smoke-tested and benchmarked: now the upload changes
            (upload,) = incoming(device)
            if change == "flip":
                data = bytearray((upload / "model.onnx").read_bytes())
                data[100] ^= 0xFF
                (upload / "model.onnx").write_bytes(bytes(data))
            else:
                (upload / "extra.py").write_text("print('not shipped')\n")
        return ssh_runner(*args, **kwargs)

    target.runner = runner
    with pytest.raises(DeviceError, match=f"activate: {message}"):
        deploy_bundle(target, bundle, probe(target, "onnxruntime"), lambda line: None)
    assert current_release(device) == before and releases(device) == [before]
    assert not incoming(device)


# ---------------------------------------------------------------- 9: one deploy of a device at a time


def test_a_second_deploy_to_a_device_is_refused_while_the_first_runs_and_staleness_is_the_lock(
        sshd, run_dir, deployed, tmp_path, capsys):
    device = copy_of(deployed, tmp_path)
    target = sshd.target("ssh", device)
    before = current_release(device)
    command = [sys.executable, "-m", "compress", "--quiet", "deploy", str(run_dir), "--target", target,
               "--bwlimit", "1", *sshd.client_args()]  # 1 KB/s: the first deploy's upload runs for minutes
    first = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not incoming(device) and time.time() < deadline:
            assert first.poll() is None, "the first deploy ended before its upload started"
            time.sleep(0.05)
        (upload,) = incoming(device)
        old = time.time() - 7200  # rsync -a gives the upload the host's mtimes: it looks hours old
        os.utime(upload, (old, old))

        capsys.readouterr()
        assert deploy(run_dir, "--target", target, *sshd.client_args()) == 1
        err = capsys.readouterr().err
        assert "FAILED, current unchanged: prepare:" in err and "another deploy is in progress" in err
        assert len(err.strip().splitlines()) == 1
        assert incoming(device) == [upload] and first.poll() is None  # the first one's upload is untouched
        assert current_release(device) == before
        assert "a deploy is in progress" in status_of(run_dir, target, sshd, capsys)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the first deploy's machine dies mid-upload
        first.wait()
    os.utime(upload)  # abandoned a moment ago: stale because no deploy holds the lock, whatever its mtime
    assert deploy(run_dir, "--target", target, *sshd.client_args(), quiet=True) == 0
    assert not incoming(device) and current_release(device) != before and len(releases(device)) == 2


# ---------------------------------------------------------------- 10: rollback along the activation history


def test_rollback_goes_back_along_the_activation_history_not_by_name(sshd, run_dir, deployed, tmp_path, capsys):
    device = copy_of(deployed, tmp_path)
    target = sshd.target("ssh", device)
    first = current_release(device)
    assert deploy(run_dir, "--target", target, *sshd.client_args(), quiet=True) == 0
    second = current_release(device)
    assert deploy(run_dir, "--target", target, "--rollback", *sshd.client_args(), quiet=True) == 0
    assert current_release(device) == first
    assert deploy(run_dir, "--target", target, *sshd.client_args(), quiet=True) == 0
    third = current_release(device)
    assert first < second < third  # by name, the one before the third is the second

    status = status_of(run_dir, target, sshd, capsys)
    assert deploy(run_dir, "--target", target, "--rollback", *sshd.client_args(), quiet=True) == 0
    assert current_release(device) == first  # what was current before the third
    assert f"--rollback goes back to {first}" in status

    history = [json.loads(line) for line in (device / "releases" / ".history").read_text().splitlines()]
    assert [(h["action"], h["version"], h["previous"]) for h in history] == [
        ("activate", first, None), ("activate", second, first), ("rollback", first, second),
        ("activate", third, first), ("rollback", first, third)]
    assert all(h["at"].endswith("Z") for h in history)
    assert deploy(run_dir, "--target", target, "--rollback", *sshd.client_args(), quiet=True) == 1  # none before
    assert current_release(device) == first


# ---------------------------------------------------------------- 11: a failed switch leaves nothing behind


def test_a_failed_switch_leaves_no_release_that_was_never_current(sshd, run_dir, deployed, tmp_path, capsys):
    device = copy_of(deployed, tmp_path)
    target = sshd.target("ssh", device)
    before = current_release(device)
    (device / "current").unlink()
    (device / "current").mkdir()  # a folder where the link goes: renaming the new link over it fails
    (device / "current" / "kept.txt").write_text("what was there stays\n")
    assert deploy(run_dir, "--target", target, *sshd.client_args()) == 1
    err = capsys.readouterr().err
    assert "FAILED, current unchanged: activate:" in err and len(err.strip().splitlines()) == 1
    assert releases(device) == [before] and not incoming(device)
    assert (device / "current" / "kept.txt").is_file()
    out = status_of(run_dir, target, sshd, capsys)
    assert "1 release(s)" in out and f"  {before}" in out


# ---------------------------------------------------------------- 12: key files in folders with odd names


def test_key_files_with_spaces_quotes_and_percent_signs_in_their_paths(sshd, run_dir, tmp_path):
    odd = tmp_path / "keys of 'Ann' \"B\" 100%"
    odd.mkdir()
    shutil.copyfile(sshd.known_hosts, odd / "known hosts")
    shutil.copy2(sshd.folder / "user_key", odd / "user key")
    (odd / "ssh config").write_text("")
    device = tmp_path / "device folder"
    args = ["--known-hosts", str(odd / "known hosts"), "--identity", str(odd / "user key"),
            "--ssh-config", str(odd / "ssh config")]
    assert deploy(run_dir, "--target", sshd.target("ssh", device), *args, quiet=True) == 0
    assert current_release(device) is not None


def test_a_key_file_ssh_cannot_be_given_is_one_line_and_exit_2(run_dir, tmp_path, capsys, tiny_config,
                                                                 write_pipeline):
    odd = tmp_path / "${HOME}"
    odd.mkdir()
    (odd / "known_hosts").write_text("")
    device = tmp_path / "device"
    assert deploy(run_dir, "--target", f"ssh://127.0.0.1{device}", "--known-hosts", str(odd / "known_hosts")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--known-hosts" in err and "ssh expands '${'" in err
    assert not device.exists()

    tiny_config["stages"]["deploy"] = {"targets": ["ssh://127.0.0.1/opt/m"], "identity": str(odd / "known_hosts")}
    path = write_pipeline(tiny_config)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: stages.deploy.identity: ") and "ssh expands '${'" in err


# ---------------------------------------------------------------- 13: an upload that fails without a word


def test_an_upload_that_fails_silently_says_what_the_exit_code_means(sshd, run_dir, deployed, tmp_path, capsys,
                                                                    monkeypatch):
    silent = tmp_path / "bin"
    silent.mkdir()
    (silent / "rsync").write_text("#!/bin/sh\nexit 11\n")  # rsync on a full disk: code 11, not a line printed
    (silent / "rsync").chmod(0o755)
    monkeypatch.setenv("PATH", f"{silent}{os.pathsep}{os.environ['PATH']}")
    device = copy_of(deployed, tmp_path)
    before = current_release(device)
    assert deploy(run_dir, "--target", sshd.target("ssh", device), *sshd.client_args()) == 1
    err = capsys.readouterr().err
    assert "upload failed: rsync exit 11 (error in file I/O: is the device's disk full?)" in err
    assert current_release(device) == before and not incoming(device)


# ---------------------------------------------------------------- 14: verify passes on what was deployed


def test_verify_passes_on_a_deployed_release_and_allows_only_what_the_device_writes(deployed, tmp_path):
    import numpy as np

    device = copy_of(deployed, tmp_path)
    release = device / "current"

    def verify() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(release / "runner.py"), "verify", str(release)],
                              capture_output=True, text=True)

    assert not list(release.resolve().rglob("__pycache__"))  # the benchmark imported the bundle's modules
    done = verify()
    assert done.returncode == 0, done.stdout
    assert json.loads(done.stdout)["verified"] == len(read_json(release / "manifest.json")["files"])
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    subprocess.run([sys.executable, str(release / "runner.py"), "infer", str(release), str(tmp_path / "x.npy")],
                   capture_output=True, check=True)
    for name in ("model.engine", "build.log", "timing.cache"):  # what the TensorRT build writes on the device
        (release / name).write_text("written on the device\n")
    assert verify().returncode == 0
    (release / "__pycache__").mkdir()
    (release / "__pycache__" / "inference.cpython-38.pyc").write_bytes(b"\x00" * 16)  # would be imported
    done = verify()
    assert done.returncode == 1 and "unexpected file __pycache__/inference.cpython-38.pyc" in done.stdout


# ---------------------------------------------------------------- 15: interpreter, host keys, releases kept


@pytest.mark.parametrize("scheme", ["ssh", "local"])
def test_a_device_python_that_does_not_exist_is_one_line_and_exit_2(sshd, run_dir, tmp_path, capsys, scheme):
    device = tmp_path / "device"
    spec = (sshd.target("ssh", device, python="/no/such/python") if scheme == "ssh"
            else f"local:{device}?python=/no/such/python")
    assert deploy(run_dir, "--target", spec, *sshd.client_args()) == 2
    err = capsys.readouterr().err
    assert "no interpreter at /no/such/python on the device" in err and len(err.strip().splitlines()) == 1
    assert not device.exists()


def test_an_unknown_host_key_and_a_changed_one_are_told_apart(sshd, run_dir, tmp_path, capsys):
    device = tmp_path / "device"
    unknown, changed = sshd.wrong_known_hosts(tmp_path)

    assert deploy(run_dir, "--target", sshd.target("ssh", device), *sshd.client_args(unknown)) == 2
    err = capsys.readouterr().err
    assert "unknown host key" in err and "CHANGED" not in err and "ssh-keyscan" in err
    assert deploy(run_dir, "--target", sshd.target("ssh", device), *sshd.client_args(changed)) == 2
    err = capsys.readouterr().err
    assert "host key CHANGED" in err and "alarm, not a first contact" in err and "it sent SHA256:" in err
    assert "unknown host key" not in err and "ssh-keyscan" not in err and len(err.strip().splitlines()) == 1
    assert not device.exists()


def test_keep_prunes_older_releases_and_bundles_never_current_nor_the_rollback_target(sshd, run_dir, deployed,
                                                                                       tmp_path, capsys):
    run = Path(shutil.copytree(run_dir, tmp_path / "run", symlinks=True))
    device = copy_of(deployed, tmp_path)
    target = sshd.target("ssh", device)
    first = current_release(device)
    assert deploy(run, "--target", target, "--keep", "1", *sshd.client_args(), quiet=True) == 0
    second = current_release(device)
    assert releases(device) == [first, second]  # the first is what --rollback goes back to
    assert deploy(run, "--target", target, "--rollback", *sshd.client_args(), quiet=True) == 0
    assert deploy(run, "--target", target, "--keep", "1", *sshd.client_args(), quiet=True) == 0
    third = current_release(device)
    assert releases(device) == [first, third]  # the second: newer than the first, but neither of the two
    assert read_json(run / "stages" / "deploy" / parse_target(target).slug / "results.json")["pruned"] == [second]
    bundles = run / "stages" / "deploy" / "bundles"
    assert sorted(p.name for p in bundles.iterdir() if not p.name.startswith(".")) == [third]
    assert deploy(run, "--target", target, "--rollback", *sshd.client_args(), quiet=True) == 0
    assert current_release(device) == first

    assert deploy(run, "--target", target, "--keep", "0", *sshd.client_args()) == 2
    assert "--keep 0: must be >= 1" in capsys.readouterr().err
    assert DeployConfig(targets=["local:/tmp/a"]).keep == 5


def test_a_deploy_section_keeps_at_least_one_release(tiny_config, write_pipeline, capsys):
    tiny_config["stages"]["deploy"] = {"targets": ["local:/tmp/a"], "keep": 0}
    path = write_pipeline(tiny_config)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: stages.deploy.keep: ") and "greater than or equal to 1" in err
