"""The console every command speaks through: progress lines unless quiet, errors always on stderr."""

from __future__ import annotations

import argparse
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


def count(text: str) -> int:
    """An argparse type: a whole number of at least 1 (samples, rounds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
