"""DeiT's hard distillation through the distillation token, for a timm `deit_*_distilled` student.

A tiny DeiT (8x8 digits, 4x4 patches, 2 blocks) learns from a CNN teacher with `ce` on the class
token and `deit_hard` on the distillation token; at evaluation timm averages the two heads, which is
what the export and every engine see.
"""

from __future__ import annotations

import json

from compress.cli import main

DEIT = {"model": "timm:deit_tiny_distilled_patch16_224",
        "kwargs": {"img_size": 8, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}}


def test_a_deit_student_distils_through_its_distillation_token(tiny_config, write_pipeline, tmp_path, capsys):
    tiny_config["student"] = DEIT
    tiny_config["stages"] = {"distill": {"epochs": 2, "batch_size": 64, "lr": 0.003,
                                         "losses": [{"name": "ce", "weight": 0.5}, {"name": "deit_hard", "weight": 0.5}]},
                             "export": {}, "benchmark": tiny_config["stages"]["benchmark"]}
    run_dir = tmp_path / "run"
    assert main(["run", str(write_pipeline(tiny_config)), "--run-dir", str(run_dir)]) == 0
    metrics = [json.loads(line) for line in (run_dir / "stages" / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["deit_hard"] > 0 for m in metrics) and metrics[-1]["deit_hard"] < metrics[0]["deit_hard"]
    parity = json.loads((run_dir / "stages" / "export" / "parity.json").read_text())
    assert parity["passed"]


def test_deit_hard_needs_a_student_with_a_distillation_token(tiny_config, write_pipeline, capsys):
    tiny_config["stages"] = {"distill": {"losses": [{"name": "ce"}, {"name": "deit_hard"}]}}
    assert main(["validate", str(write_pipeline(tiny_config))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stages.distill.losses.1" in err[0] and "distillation token" in err[0], err
