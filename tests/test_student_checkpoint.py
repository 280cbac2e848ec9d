"""student.checkpoint: the student starts from given weights (checked like the teacher's), and they join its keys."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from compress.cli import main
from compress.models import ModelSpec, build_model


def distill_only(tiny_config: dict) -> dict:
    tiny_config["stages"] = {"distill": {"epochs": 1, "batch_size": 64, "lr": 0.01}}
    return tiny_config


def student_weights(seed: int, classes: int = 10):
    torch.manual_seed(seed)
    return build_model(ModelSpec("mlp", 1, classes, 8, {"hidden": [32]})).state_dict()


@pytest.mark.slow
def test_a_student_starts_from_its_checkpoint_and_new_weights_rerun_distill(tiny_config, write_pipeline, tmp_path,
                                                                            capsys):
    config = distill_only(tiny_config)
    torch.save(student_weights(1), tmp_path / "student.pt")
    config["student"]["checkpoint"] = "student.pt"
    run_dir = tmp_path / "run"
    assert main(["run", str(write_pipeline(config)), "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"student starts from {tmp_path / 'student.pt'}" in out
    first = json.loads((run_dir / "run.json").read_text())["stages"]["distill"]["key"]

    torch.save(student_weights(2), tmp_path / "student.pt")  # other weights, same path: distill reruns
    assert main(["run", str(write_pipeline(config)), "--run-dir", str(run_dir)]) == 0
    assert json.loads((run_dir / "run.json").read_text())["stages"]["distill"]["key"] != first


def test_a_student_checkpoint_for_other_classes_gets_a_fresh_head_and_says_so(tiny_config, write_pipeline, tmp_path,
                                                                              capsys):
    config = distill_only(tiny_config)
    save_file(student_weights(1, classes=4), tmp_path / "student.safetensors")
    config["student"]["checkpoint"] = "student.safetensors"
    assert main(["run", str(write_pipeline(config)), "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "student.checkpoint: student.safetensors has a 4-class head, the data has 10 classes" in out
    assert "replaced (fresh weights, trained by distill)" in out


def test_bad_student_checkpoints_are_one_line_naming_the_field(tiny_config, write_pipeline, tmp_path, capsys):
    config = distill_only(tiny_config)
    config["student"]["checkpoint"] = "missing.pt"
    assert main(["validate", str(write_pipeline(config))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "student.checkpoint: file not found" in err[0], err

    torch.manual_seed(0)
    torch.save(build_model(ModelSpec("mlp", 1, 10, 8, {"hidden": [64]})).state_dict(), tmp_path / "wide.pt")
    config["student"]["checkpoint"] = "wide.pt"
    assert main(["validate", str(write_pipeline(config))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "student.checkpoint: wide.pt does not match the config" in err[0], err

    (tmp_path / "fake.safetensors").write_bytes(b"not a safetensors file")
    config["student"]["checkpoint"] = "fake.safetensors"
    assert main(["validate", str(write_pipeline(config))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "student.checkpoint" in err[0] and "fake.safetensors" in err[0], err
