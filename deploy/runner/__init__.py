"""The on-device runner: `runner.py` is copied into every bundle and piped to `python3 -` for release steps."""

from pathlib import Path

RUNNER_PATH = Path(__file__).with_name("runner.py")


def runner_source() -> bytes:
    return RUNNER_PATH.read_bytes()
