"""data.mean: model — normalise with the statistics the model's weights were trained with."""

from __future__ import annotations

import pytest

from compress.cli import main
from compress.runner import load_pipeline


def test_mean_model_takes_the_timm_teachers_numbers_and_the_run_records_them(tiny_config, write_pipeline):
    tiny_config["data"] = {"source": "digits", "mean": "model"}
    tiny_config["teacher"]["model"] = "timm:resnet10t"
    tiny_config["teacher"]["kwargs"] = {}
    pipeline = load_pipeline(write_pipeline(tiny_config))
    assert pipeline.data.mean == pytest.approx([0.485, 0.456, 0.406])
    assert pipeline.data.std == pytest.approx([0.229, 0.224, 0.225])
    assert pipeline.data.model_dump(mode="json")["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_mean_model_without_a_model_that_knows_is_one_line(tiny_config, write_pipeline, capsys):
    tiny_config["data"] = {"source": "digits", "mean": "model"}
    assert main(["validate", str(write_pipeline(tiny_config))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.mean: is 'model', but neither cnn nor mlp says its mean/std" in err[0], err

    tiny_config["data"] = {"source": "digits", "mean": "model", "std": [0.5]}
    assert main(["validate", str(write_pipeline(tiny_config))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mean: model takes the model's std too" in err[0], err


def test_a_mean_of_the_wrong_length_is_refused_when_the_data_is_read(tiny_config, write_pipeline, tmp_path, capsys):
    tiny_config["data"] = {"source": "digits", "mean": [0.1, 0.2, 0.3], "std": [1.0, 1.0, 1.0]}
    assert main(["run", str(write_pipeline(tiny_config)), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.mean: 3 values for inputs of 1 channels" in err[0], err
