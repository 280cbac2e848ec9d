"""A deploy target: where releases live and how the on-device runner is reached.

Every device step runs a device program piped to the device's Python, as an argument list:
`deploy/runner/releases.py` for the steps on the device folder (verify, the deploy lock, switching,
history), `deploy/runner/runner.py` for the others; it answers with one JSON line. Targets differ
only in transport.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.core.errors import CompressError, UsageError
from deploy.runner import RUNNER_DIR, runner_source

# The device program's steps that releases.py answers; runner.py answers the rest.
RELEASE_STEPS = ("verify", "prepare", "activate", "discard", "rollback", "status")


class DeviceError(CompressError):
    """A step on the device failed (exit 1); `current` on the device is left as it was."""

    exit_code = 1


def slugify(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-.") or "target"


@dataclass
class Target:
    spec: str
    root: str
    python: str = "python3"
    sysroot: str | None = None
    tools: str | None = None
    kind: str = "local"
    default_runtime: str = "onnxruntime"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The target without its query options, for progress lines."""
        return self.spec.split("?", 1)[0]

    @property
    def slug(self) -> str:
        return slugify(self.spec.split("?", 1)[0].replace("://", "-"))

    def releases_dir(self) -> str:
        return f"{self.root.rstrip('/')}/releases"

    # Transport, implemented by each target.
    def command(self, argv: list[str]) -> list[str]:
        """The local argument list that runs `argv` on the device."""
        raise NotImplementedError

    def upload(self, local_dir: Path, remote_dir: str, bwlimit_kbps: int | None = None) -> None:
        raise NotImplementedError

    def check_transport_error(self, done: subprocess.CompletedProcess) -> None:
        """Raise a clear error when the transport itself (not the runner) failed."""

    def check_device(self, probe: dict[str, Any], runtime: str) -> None:
        """Refuse (exit 2, nothing changed) a device that cannot run the chosen runtime."""
        if not probe.get("numpy"):
            raise UsageError(f"{self.label}: numpy is not installed for {self.python} on the device")
        if runtime == "tensorrt" and not probe.get("trtexec"):
            raise UsageError(f"{self.label}: trtexec not found on the device (PATH, /usr/src/tensorrt/bin), so no "
                             "TensorRT engine can be built there; deploy with --runtime onnxruntime")
        if runtime in ("onnxruntime", "openvino") and not probe.get(runtime):
            raise UsageError(f"{self.label}: {runtime} is not installed for {self.python} on the device "
                             f"(pip install {runtime}), or choose another --runtime")

    # The runner protocol.
    def program(self, args: tuple[str, ...]) -> tuple[list[str], bytes]:
        """The argument list that runs step `args` on the device, and the program piped to it."""
        if args[0] in RELEASE_STEPS:
            return [self.python, "-", *args], (RUNNER_DIR / "releases.py").read_bytes()
        tools = ["--tools", self.tools] if self.tools else []
        return [self.python, "-", *tools, *args], runner_source()

    def runner(self, *args: str, timeout: float | None = 900) -> dict[str, Any]:
        argv, source = self.program(args)
        try:
            done = subprocess.run(self.command(argv), input=source, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.label}: '{args[0]}' timed out after {timeout:.0f}s") from None
        except FileNotFoundError as error:
            raise self.not_found(error.filename) from None
        return self.answer(args[0], done, last_json_line(done.stdout.decode(errors="replace")))

    def hold(self, *args: str, timeout: float = 120) -> HeldStep:
        """Start a step that answers and then keeps running (prepare, holding the deploy lock) until `end()`."""
        argv, source = self.program(args)
        stderr = tempfile.TemporaryFile()
        try:
            process = subprocess.Popen(self.command(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=stderr)
        except FileNotFoundError as error:
            stderr.close()
            raise self.not_found(error.filename) from None
        held = HeldStep(process, stderr)
        try:
            process.stdin.write(source)
            process.stdin.close()
        except OSError:  # the device's side ended already; its exit status says why
            pass
        try:
            answer = held.answers.get(timeout=timeout)
        except queue.Empty:
            held.end()
            raise DeviceError(f"{self.label}: '{args[0]}' timed out after {timeout:.0f}s") from None
        if answer is None or "error" in answer:  # it ends by itself: say why, as for any other step
            held.end(grace=30)
            self.answer(args[0], subprocess.CompletedProcess(argv, process.returncode, b"", held.error_output), answer)
        held.answer = answer
        return held

    def not_found(self, program: str | None) -> UsageError:
        if program == self.python:
            return UsageError(f"{self.label}: no interpreter at {self.python} on the device (?python=)")
        return UsageError(f"{self.label}: cannot run {program} on this machine")

    def answer(self, step: str, done: subprocess.CompletedProcess, answer: dict | None) -> dict[str, Any]:
        """The step's JSON answer, or the one error that says why there is none."""
        self.check_transport_error(done)
        if answer is None:
            if done.returncode in (126, 127):  # the device's shell could not run ?python= at all
                raise UsageError(f"{self.label}: no interpreter at {self.python} on the device (?python=): "
                                 f"{tail(done.stderr.decode(errors='replace')) or f'exit {done.returncode}'}")
            detail = tail(done.stderr.decode(errors="replace")) or f"exit {done.returncode}"
            raise DeviceError(f"{self.label}: runner '{step}' gave no answer: {detail}")
        if "error" in answer:
            raise DeviceError(f"{self.label}: {step}: {answer['error']}")
        return answer


class HeldStep:
    """A device step still running after its answer: its heartbeat lines are read and dropped until it ends."""

    def __init__(self, process: subprocess.Popen, stderr):
        self.process, self.stderr = process, stderr
        self.answers: queue.Queue = queue.Queue()
        self.answer: dict[str, Any] = {}
        self.error_output = b""
        threading.Thread(target=self.read, daemon=True).start()

    def read(self) -> None:
        answered = False
        for line in self.process.stdout:
            value = None if answered else last_json_line(line.decode(errors="replace"))
            if value is not None:
                answered = True
                self.answers.put(value)
        self.answers.put(None)  # ended without (another) answer

    def end(self, grace: float = 0) -> None:
        """Stop it after `grace` seconds (the deploy lock is free within a heartbeat of that) and reap it."""
        for stop, seconds in ((None, grace), (self.process.terminate, 10), (self.process.kill, None)):
            if stop is not None and self.process.poll() is None:
                stop()
            try:
                self.process.wait(timeout=seconds)
                break
            except subprocess.TimeoutExpired:
                continue
        if not self.stderr.closed:
            self.stderr.seek(0)
            self.error_output = self.stderr.read()
            self.stderr.close()


def last_json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def tail(text: str, lines: int = 2) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])
