"""The device side: the two device programs and the modules they load from a release, in every bundle.

Torch-free and Python 3.8-compatible, importing nothing of the toolchain: the host's engines and
benchmark use `sessions` and `harness` from here too, so host and device run and time a model
with the same code. The host pipes `releases.py` to `python3 -` for the release steps (verify,
lock, activate, rollback, status) and `runner.py` for probe, smoke, bench and build-engine; a causal LM's
release is checked, timed and run by `lm_device.py` instead of `device_bench.py` and `inference.py`, and a
detector's by `detection_device.py`.
"""

from pathlib import Path

RUNNER_DIR = Path(__file__).parent
RUNNER_PATH = RUNNER_DIR / "runner.py"
# Every file a bundle carries beside its model: the device programs, then the modules runner.py loads.
RUNNER_FILES = ("runner.py", "releases.py", "sessions.py", "harness.py", "preprocess.py", "inference.py",
                "device_bench.py")
# Shipped with a causal LM's bundle only, beside RUNNER_FILES (a classifier's bundle keeps its files): greedy
# generation over the KV cache and its timing (decode_timing.py; an OpenVINO folder's in ov_generation.py, a TensorRT-LLM engine's build and
# decoding in trtllm_device.py), and the device's check, timing and `generate` command of a generating release.
GENERATION_FILES = ("generation.py", "decode_timing.py", "ov_generation.py", "trtllm_device.py", "lm_device.py")
# Shipped with a detector's bundle only, beside RUNNER_FILES: the letterbox, decode and NMS the host measured with,
# and the device's box check, timing and `infer` of a detector's release.
DETECTION_FILES = ("detection.py", "detection_device.py")


def runner_source() -> bytes:
    return RUNNER_PATH.read_bytes()
