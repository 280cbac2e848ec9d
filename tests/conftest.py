"""Shared fixtures: a tiny pipeline on the digits data that runs in seconds."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"source": "digits", "val_fraction": 0.25},
    "teacher": {"model": "cnn", "kwargs": {"channels": [16, 32]},
                "train": {"epochs": 3, "batch_size": 64, "lr": 0.005}},
    "student": {"model": "mlp", "kwargs": {"hidden": [32]}},
    "stages": {
        "distill": {"epochs": 3, "batch_size": 64, "lr": 0.01, "temperature": 4.0, "alpha": 0.7},
        "export": {},
        "build": {"targets": ["onnxruntime:fp32"]},
        # memory (each artifact alone in a fresh process) costs seconds; test_pipeline's end-to-end test turns it on
        "benchmark": {"batch_sizes": [1, 8], "warmup": 1, "runs": 3, "min_seconds": 0.0, "memory": False},
        "report": {},
    },
}


@pytest.fixture
def tiny_config() -> dict:
    return copy.deepcopy(TINY)


@pytest.fixture
def write_pipeline(tmp_path: Path):
    """Write a pipeline dict as YAML in tmp_path and return its path."""

    def write(config: dict, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory):
    """The tiny causal LM pipeline of tests/test_lm_pipeline.py with a deploy stage to a `local:` device, run once
    for the session (its stages and its deploy are checked by two test files): (exit code, run dir, device, log)."""
    import contextlib
    import io

    from compress.cli import main
    from test_lm_pipeline import lm_config

    folder = tmp_path_factory.mktemp("lm-run")
    device = folder / "device"
    config = lm_config(**{"stages.deploy": {"targets": [f"local:{device}"], "rounds": 1}})
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(config))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", str(folder / "pipeline.yaml"), "--run-dir", str(folder / "run")])
    return code, folder / "run", device, out.getvalue()


@pytest.fixture(scope="session")
def det_data(tmp_path_factory) -> Path:
    """A tiny COCO set of digits on 96x96 canvases (40 train, 12 val, 12 test images)."""
    from compress.tasks.object_detection.synthetic import write_digits_coco

    folder = tmp_path_factory.mktemp("det-data")
    write_digits_coco(folder, {"train": 40, "val": 12, "test": 12}, canvas=96, seed=0)
    return folder


@pytest.fixture(scope="session")
def det_run(det_data, tmp_path_factory):
    """The tiny detector pipeline of tests/test_detection_pipeline.py with a deploy stage to a `local:` device, run
    once for the session (its stages and its deploy are checked by two test files): (exit code, run dir, device,
    log)."""
    import contextlib
    import io

    from compress.cli import main
    from test_detection_pipeline import det_config

    folder = tmp_path_factory.mktemp("det-run")
    device = folder / "device"
    config = det_config(det_data, **{"stages.deploy": {"targets": [f"local:{device}"], "rounds": 1}})
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(config))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", str(folder / "pipeline.yaml"), "--run-dir", str(folder / "run")])
    return code, folder / "run", device, out.getvalue()
