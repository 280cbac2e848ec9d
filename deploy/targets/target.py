"""A deploy target: where releases live and how the on-device runner is reached.

Every device step runs the runner (`deploy/runner/runner.py`) piped to the device's Python, as an
argument list; the runner answers with one JSON line. Targets differ only in transport.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.core.errors import CompressError, UsageError
from deploy.runner import runner_source


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
    def runner(self, *args: str, timeout: float | None = 900) -> dict[str, Any]:
        tools = ["--tools", self.tools] if self.tools else []
        argv = [self.python, "-", *tools, *args]
        try:
            done = subprocess.run(self.command(argv), input=runner_source(), capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.label}: '{args[0]}' timed out after {timeout:.0f}s") from None
        except FileNotFoundError as error:
            raise UsageError(f"{self.label}: cannot run {error.filename} on this machine") from None
        self.check_transport_error(done)
        answer = last_json_line(done.stdout.decode(errors="replace"))
        if answer is None:
            detail = tail(done.stderr.decode(errors="replace")) or f"exit {done.returncode}"
            raise DeviceError(f"{self.label}: runner '{args[0]}' gave no answer: {detail}")
        if "error" in answer:
            raise DeviceError(f"{self.label}: {args[0]}: {answer['error']}")
        return answer


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
