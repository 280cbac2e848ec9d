"""`local:/path`: a folder on this machine, run with this machine's Python (or `?python=`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from deploy.targets.target import Target


class LocalTarget(Target):
    def command(self, argv: list[str]) -> list[str]:
        return argv

    def upload(self, local_dir: Path, remote_dir: str, bwlimit_kbps: int | None = None) -> None:
        shutil.copytree(local_dir, remote_dir)
