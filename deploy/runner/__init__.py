"""The device side: `runner.py` and the files it loads from a release, copied into every bundle.

Torch-free and Python 3.8-compatible, importing nothing of the toolchain: the host's engines and
benchmark use `sessions` and `harness` from here too, so host and device run and time a model
with the same code. runner.py is also piped to `python3 -` for the release steps.
"""

from pathlib import Path

RUNNER_DIR = Path(__file__).parent
RUNNER_PATH = RUNNER_DIR / "runner.py"
# Every file a bundle carries beside its model, in the order runner.py needs them.
RUNNER_FILES = ("runner.py", "sessions.py", "harness.py", "preprocess.py", "inference.py", "device_bench.py")


def runner_source() -> bytes:
    return RUNNER_PATH.read_bytes()
