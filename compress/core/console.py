"""The console every command speaks through: progress lines unless quiet, errors always on stderr."""

from __future__ import annotations

import sys


class Console:
    """Prints progress lines unless quiet; errors always go to stderr."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)

    @staticmethod
    def error(message: str) -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)
