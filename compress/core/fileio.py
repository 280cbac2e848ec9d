"""Atomic writes and hashing: a crash never leaves a half-written artifact under its final name."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from compress.core.errors import UsageError

# Kernel file systems: a run dir there cannot hold files, whatever the permissions say.
KERNEL_FILE_SYSTEMS = (Path("/proc"), Path("/sys"))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the same folder; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _mode_for(path))
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _mode_for(path: Path) -> int:
    """The mode a plain open() would give: an existing file keeps its own; a new one gets 0666 less the umask.

    mkstemp makes its file 0600, which would leave every atomically written file unreadable to the group.
    """
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without setting it (os.umask sets it, racing other threads that create files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def ensure_writable_dir(path: str | os.PathLike, create: bool = True, name: str | None = None) -> None:
    """Refuse, in one line, a folder that cannot hold the files a command is about to write.

    Checked before anything is written, so that a bad --run-dir is a usage error (exit 2), not a
    traceback from the first write halfway through a run. `name` is how the messages name the folder
    (`--run-dir runs/x`: the option that fixes it); default: its path.
    """
    path = Path(path)
    name = name or str(path)
    absolute = Path(os.path.abspath(path))
    for root in KERNEL_FILE_SYSTEMS:
        if absolute == root or root in absolute.parents:
            raise UsageError(f"{name}: lies under {root}, a kernel file system that cannot hold these files")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{name}: is a file, not a folder")
    blocker = next((p for p in absolute.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UsageError(f"{name}: lies under {blocker}, which is a file, not a folder")
    if not path.exists():
        if not create:
            raise UsageError(f"{name}: no such folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"{name}: cannot create this folder: {error.strerror or error}") from None
    try:  # what every atomic write does: a new file in the folder (root ignores modes, not chattr +i)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
    except OSError as error:
        raise UsageError(f"{name}: cannot write files in this folder: {error.strerror or error}") from None
    os.close(fd)
    os.unlink(probe)


class DirLock:
    """An exclusive, non-blocking flock on `<dir>/.lock`; released when the process dies."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / ".lock"
        self._fh = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
