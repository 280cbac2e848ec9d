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
