"""Errors that map to the CLI's exit codes.

1: a stage failed at run time, 2: bad usage, config or input file, 3: a gate failed.
"""

from __future__ import annotations


class CompressError(Exception):
    exit_code = 1


class UsageError(CompressError):
    """Bad input from the user: one line naming the file and the field."""

    exit_code = 2


class ConfigError(UsageError):
    def __init__(self, file: str, path: str, message: str):
        self.file, self.path, self.message = str(file), path, message
        where = f"{self.file}: {path}" if path else self.file
        super().__init__(f"{where}: {message}")


class StageFailed(CompressError):
    exit_code = 1

    def __init__(self, stage: str, message: str):
        self.stage = stage
        super().__init__(f"stage {stage} failed: {message}")


class GateFailed(CompressError):
    exit_code = 3
