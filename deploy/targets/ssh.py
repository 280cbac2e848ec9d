"""`ssh://user@host[:port]/path`: any Linux box, through the system OpenSSH client.

Using `ssh`/`rsync`/`scp` (not a Python SSH library) keeps the user's ~/.ssh/config, agent and jump
hosts working. Host keys are checked strictly (never accepted on first use); the remote command is
one string for the remote shell, so every argument is quoted with shlex.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from compress.core.errors import UsageError
from deploy.targets.target import DeviceError, Target, tail

HOST_KEY_FAILURES = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED",
                     "No matching host key", "host key for", "Host key for")


@dataclass
class SshOptions:
    known_hosts: str | None = None
    identity: str | None = None
    options: list[str] = field(default_factory=list)  # extra `-o Key=Value`
    config: str | None = None  # ssh -F (default: the user's ~/.ssh/config)

    def args(self) -> list[str]:
        args = ["-F", self.config] if self.config else []
        args += ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
        if self.known_hosts:
            args += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if self.identity:
            args += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        for option in self.options:
            args += ["-o", option]
        return args


class SshTarget(Target):
    def __init__(self, *args, user: str | None, host: str, port: int | None, ssh: SshOptions, **kwargs):
        super().__init__(*args, **kwargs)
        self.user, self.host, self.port, self.ssh = user, host, port, ssh

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def ssh_base(self) -> list[str]:
        return ["ssh", *self.ssh.args(), *(["-p", str(self.port)] if self.port else [])]

    def command(self, argv: list[str]) -> list[str]:
        return [*self.ssh_base(), "--", self.destination, shlex.join(argv)]

    def check_transport_error(self, done: subprocess.CompletedProcess) -> None:
        if done.returncode != 255:
            return
        stderr = done.stderr.decode(errors="replace")
        if any(marker in stderr for marker in HOST_KEY_FAILURES):
            where = f"[{self.host}]:{self.port}" if self.port else self.host
            known = self.ssh.known_hosts or "~/.ssh/known_hosts"
            raise UsageError(
                f"{self.label}: host key of {where} is unknown or has changed (checked against {known}); "
                f"refusing to connect. Verify the fingerprint, then add it: "
                f"ssh-keyscan {'-p ' + str(self.port) + ' ' if self.port else ''}{self.host} >> {known}")
        raise DeviceError(f"{self.label}: ssh failed: {tail(stderr) or 'exit 255'}")

    def upload(self, local_dir: Path, remote_dir: str, bwlimit_kbps: int | None = None) -> None:
        if shutil.which("rsync"):
            argv = ["rsync", "-a", "-s", "--partial", "-e", shlex.join(self.ssh_base())]
            if bwlimit_kbps:
                argv.append(f"--bwlimit={bwlimit_kbps}")
            argv += [f"{local_dir}/", f"{self.destination}:{remote_dir}/"]
        else:
            argv = ["scp", "-r", "-q", *self.ssh.args(), *(["-P", str(self.port)] if self.port else [])]
            if bwlimit_kbps:
                argv += ["-l", str(bwlimit_kbps * 8)]
            argv += ["--", str(local_dir), f"{self.destination}:{remote_dir}"]
        done = subprocess.run(argv, capture_output=True)
        if done.returncode != 0:
            self.check_transport_error(done)
            raise DeviceError(f"{self.label}: upload failed: {tail(done.stderr.decode(errors='replace'))}")
