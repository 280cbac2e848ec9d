"""`ssh://user@host[:port]/path`: any Linux box, through the system OpenSSH client.

Using `ssh`/`rsync`/`scp` (not a Python SSH library) keeps the user's ~/.ssh/config, agent and jump
hosts working. Host keys are checked strictly (never accepted on first use); the remote command is
one string for the remote shell, so every argument is quoted with shlex. A file given as an ssh
option value is read by ssh's config parser, which splits on spaces and expands `%`: it is quoted
and escaped as that parser expects (`option_value`).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from compress.core.errors import UsageError
from deploy.targets.target import DeviceError, Target, tail

HOST_KEY_FAILURES = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED",
                     "No matching host key", "host key for", "Host key for")
HOST_KEY_CHANGED = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "has changed and you have requested strict checking")
HOST_KEY_UNKNOWN = ("host key is known for", "and you have requested strict checking")
# rsync(1), EXIT VALUES: what the code means when rsync printed nothing to say why.
RSYNC_EXIT = {1: "syntax or usage error", 2: "protocol incompatibility", 3: "errors selecting input/output files",
              4: "requested action not supported", 5: "error starting the client-server protocol",
              10: "error in socket I/O", 11: "error in file I/O: is the device's disk full?",
              12: "error in the rsync protocol data stream: rsync missing on the device, or its disk full?",
              13: "errors with program diagnostics", 14: "error in IPC code", 20: "received SIGUSR1 or SIGINT",
              21: "some error returned by waitpid()", 22: "error allocating core memory buffers",
              23: "partial transfer due to error", 24: "partial transfer: source files vanished",
              30: "timeout in data send/receive", 35: "timeout waiting for daemon connection"}


def option_value(path: str) -> str:
    """A path as ssh's `-o Key=Value` parser reads it back: in double quotes, `\\` and `"` escaped, `%` doubled."""
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def unsafe_path(path: str) -> str | None:
    """Why ssh cannot be handed this file at all (it expands `${...}` with no escape), or None."""
    if "${" in path:
        return "ssh expands '${' in file names (there is no escape for it); rename or move the file"
    if any(c in path for c in "\n\r\0"):
        return "a file name with a line break cannot be passed to ssh"
    return None


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
            args += ["-o", f"UserKnownHostsFile={option_value(self.known_hosts)}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if self.identity:  # not -i, which expands `%` as well
            args += ["-o", f"IdentityFile={option_value(self.identity)}", "-o", "IdentitiesOnly=yes"]
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
        where = f"[{self.host}]:{self.port}" if self.port else self.host
        known = self.ssh.known_hosts or "~/.ssh/known_hosts"
        if any(marker in stderr for marker in HOST_KEY_CHANGED):
            sent = re.search(r"SHA256:[A-Za-z0-9+/=]+", stderr)
            raise UsageError(
                f"{self.label}: host key CHANGED: {where} answered with a key other than the one in {known}"
                f"{f' (it sent {sent.group(0)})' if sent else ''}; "
                f"refusing to connect. This is an alarm, not a first contact: someone may be intercepting the "
                f"connection, or the device was reinstalled. Find out which before you replace its line in {known}")
        if any(marker in stderr for marker in HOST_KEY_FAILURES):
            unknown = all(marker in stderr for marker in HOST_KEY_UNKNOWN)
            what = (f"unknown host key: {where} is not in {known}" if unknown
                    else f"host key of {where} not accepted (checked against {known})")
            raise UsageError(
                f"{self.label}: {what}; refusing to connect. Verify the fingerprint, then add it: "
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
            raise DeviceError(f"{self.label}: upload failed: {exit_meaning(argv[0], done.returncode)}"
                              + (f": {tail(done.stderr.decode(errors='replace'))}" if done.stderr.strip() else ""))


def exit_meaning(program: str, code: int) -> str:
    """`rsync exit 11 (error in file I/O: ...)`: the code and what it means, for an upload that says nothing."""
    if code < 0:
        return f"{program} killed by signal {-code}"
    meaning = RSYNC_EXIT.get(code) if program == "rsync" else None
    return f"{program} exit {code}" + (f" ({meaning})" if meaning else "")
