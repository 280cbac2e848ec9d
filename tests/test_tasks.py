"""The task packages: which task a pipeline runs, and that `compress validate` and `compress run` describe the
data with the task's one description (sizes after the split, thin classes) for images and texts alike."""

from __future__ import annotations

import pytest
import yaml

from compress.cli import main
from compress.runner import parse_pipeline
from compress.tasks.registry import TASKS, task_for
from tests.test_text_pipeline import text_config, write, write_texts  # noqa: F401  (fixture)


def test_the_task_is_the_one_named_or_the_one_that_claims_the_data(tiny_config, text_config, tmp_path):
    assert task_for(parse_pipeline(tiny_config, base=tmp_path)).name == "image-classification"
    assert task_for(parse_pipeline(text_config, base=tmp_path)).name == "text-classification"
    named = parse_pipeline({**text_config, "task": "text-classification"}, base=tmp_path)
    assert named.task_name == "text-classification"
    assert list(TASKS) == ["causal-lm", "object-detection", "text-classification", "image-classification"]


def test_an_unknown_task_is_one_line_naming_the_known_ones(tiny_config, write_pipeline, capsys):
    tiny_config["task"] = "speech-recognition"
    assert main(["validate", str(write_pipeline(tiny_config))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task: unknown task 'speech-recognition'" in err[0]
    assert "image-classification" in err[0] and "text-classification" in err[0]


def test_validate_describes_texts_as_the_run_does_thin_classes_included(text_config, tmp_path, capsys):
    """Validate used to print the file's counts alone; the run's [data] lines (sizes after the split, the
    thin-class warning) now come from the same task function in both commands."""
    header, *lines = (tmp_path / "val.csv").read_text().splitlines()
    kept = [line for line in lines if not line.endswith(",money")][:40] + \
        [line for line in lines if line.endswith(",money")][:2]
    (tmp_path / "val.csv").write_text("\n".join([header, *kept]) + "\n")
    path = write(tmp_path, text_config)
    assert main(["validate", str(path)]) == 0
    said = capsys.readouterr().out
    assert "task: text-classification" in said
    assert "data: 240 train, 42 val samples, 3 classes" in said
    assert "data: warning: 1 class(es) with fewer than 5 validation samples ('money' 2)" in said
    assert "samples per class (3 classes): money 80, sport 80, weather 80 (240 in the main source" in said


def test_validate_refuses_data_the_run_would_refuse(tiny_config, write_pipeline, tmp_path, capsys):
    import numpy as np

    np.savez(tmp_path / "bad.npz", x=np.zeros((20, 1, 8, 8), np.float32), y=np.zeros(20, np.int64))
    tiny_config["data"] = {"source": "npz", "path": str(tmp_path / "bad.npz")}
    assert main(["validate", str(write_pipeline(tiny_config))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.npz" in err[0], err
