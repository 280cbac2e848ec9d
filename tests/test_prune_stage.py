"""stages.prune in a pipeline: the student is the teacher pruned to a budget, then distilled, exported, built,
benchmarked and reported like any student; and every bad input is one line naming its field, exit 2."""

from __future__ import annotations

import copy

import pytest
import yaml

from compress.cli import main
from compress.core.fileio import read_json
from compress.models import count_macs, load_model
from compress.runner import Runner, parse_pipeline

PRUNED = {
    "name": "tiny-pruned",
    "seed": 0,
    "data": {"source": "digits", "val_fraction": 0.25},
    "teacher": {"model": "cnn", "kwargs": {"channels": [16, 32]},
                "train": {"epochs": 3, "batch_size": 64, "lr": 0.005, "progress": False}},
    "stages": {  # no student section: the student is the pruned teacher
        "prune": {"target_macs": 0.4, "method": "taylor", "rounds": 2, "epochs_per_round": 1, "taylor_batches": 2,
                  "batch_size": 64, "lr": 0.005, "progress": False},
        "baseline": {},
        "distill": {"epochs": 2, "batch_size": 64, "lr": 0.01, "progress": False},
        "export": {},
        "build": {"targets": ["onnxruntime:fp32"]},
        "benchmark": {"batch_sizes": [1], "warmup": 1, "runs": 3, "min_seconds": 0.0, "memory": False, "rounds": 1},
        "report": {},
    },
}


@pytest.fixture
def pruned_config() -> dict:
    return copy.deepcopy(PRUNED)


def write(tmp_path, config: dict):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(path, run_dir) -> int:
    return main(["run", str(path), "--run-dir", str(run_dir)])


def test_a_pruned_teacher_goes_through_distill_export_build_and_the_report(pruned_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run(write(tmp_path, pruned_config), run_dir) in (0, 3)
    out = capsys.readouterr().out
    assert "[distill] student starts from the pruned teacher (stages/prune/student.pruned.pt)" in out
    assert "[baseline] student starts from the pruned teacher" in out
    stages = read_json(run_dir / "run.json")["stages"]
    assert all(entry["status"] == "done" for entry in stages.values())
    prune = stages["prune"]["outputs"]
    assert prune["macs_ratio"] <= 0.4 and [r["round"] for r in prune["rounds"]] == [1, 2]
    assert "val_top1_tuned" in prune["rounds"][0] and "val_top1_tuned" not in prune["rounds"][1]  # distill does the last
    assert prune["kept_whole"] == ["fc"]
    # The distilled student keeps the pruned shapes, rebuilt from its spec with weights_only loading.
    student, spec = load_model(run_dir / stages["distill"]["outputs"]["checkpoint"])
    assert spec.pruned and count_macs(student, (1, 8, 8)) == prune["student"]["macs"]
    rows = read_json(run_dir / "stages" / "benchmark" / "results.json")["rows"]
    assert {r["macs"] for r in rows if r["model"] == "student"} == {prune["student"]["macs"]}
    assert any(r["backend"] == "onnxruntime" for r in rows)
    report = (run_dir / "report.md").read_text()
    assert "## Pruning: the student is the teacher, pruned" in report
    assert "| round 1: pruned, before KD |" in report and "| pruned student after KD (distill) |" in report
    assert f"| `layers.0` | Conv2d | 1 → 1 | 16 → {student.layers[0].out_channels} |" in report
    assert 'id="pruning"' in (run_dir / "report.html").read_text()
    resolved = yaml.safe_load((run_dir / "pipeline.yaml").read_text())
    assert resolved["student"]["model"] == "cnn" and resolved["student"]["kwargs"] == {"channels": [16, 32]}

    # A changed budget reruns prune and every stage that starts from it; the teacher is reused.
    assert changed_keys(pruned_config, {"target_macs": 0.3}, tmp_path) == ["prune", "baseline", "distill", "export",
                                                                           "build", "benchmark", "report"]


def changed_keys(config: dict, prune_change: dict, tmp_path) -> list[str]:
    """The stages whose cache key (what decides a rerun) changes with `prune_change`."""
    def keys(raw: dict) -> dict[str, str]:
        runner, found = Runner(parse_pipeline(raw, "pipeline.yaml", tmp_path), tmp_path / "keys"), {}
        for name in runner.stage_names:
            found[name] = runner.stage_key(name, found)
        return found

    changed = copy.deepcopy(config)
    changed["stages"]["prune"].update(prune_change)
    before, after = keys(config), keys(changed)
    return [name for name in before if before[name] != after[name]]


ODD_MODELS = '''
import torch
from torch import nn


class FixedOffset(nn.Module):
    def forward(self, x):
        return x + torch.arange(16.0).view(1, 16, 1, 1)


class Net(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.conv, self.odd, self.fc = nn.Conv2d(in_channels, 16, 3, padding=1), FixedOffset(), nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.odd(self.conv(x)).mean((2, 3)))


def odd_net(in_channels, num_classes):
    return Net(in_channels, num_classes)
'''


def test_a_teacher_the_pruner_cannot_follow_is_one_line_naming_the_module_type(pruned_config, tmp_path, capsys):
    (tmp_path / "odd_models.py").write_text(ODD_MODELS)
    pruned_config["name"] = "odd"
    pruned_config["teacher"] = {"model": "odd_models:odd_net", "train": {"epochs": 1, "progress": False}}
    assert run(write(tmp_path, pruned_config), tmp_path / "run") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pipeline.yaml: teacher.model: 'odd_models:odd_net': the pruner cannot follow the " \
                              "model through FixedOffset (odd)" in err[0]
    assert read_json(tmp_path / "run" / "run.json")["stages"]["teacher"]["status"] == "done"  # nothing lost


def text_data(tmp_path) -> dict:
    lines = ["text,label"] + [f"word{i % 7} other{i % 3},{'ab'[i % 2]}" for i in range(40)]
    (tmp_path / "texts.csv").write_text("\n".join(lines) + "\n")
    return {"source": "text", "path": "texts.csv", "text": {"max_length": 8, "vocab_size": 100}}


def bert(config: dict) -> None:
    config["teacher"] = {"model": "hf-config:bert", "kwargs": {"layers": 1, "hidden": 16, "heads": 2},
                         "train": {"epochs": 1}}


@pytest.mark.parametrize("change, field, words", [
    (lambda c, _: c["stages"]["prune"].update(target_macs=1.5), "stages.prune.target_macs", "not a fraction in (0, 1)"),
    (lambda c, _: c["stages"]["prune"].update(target_macs=0), "stages.prune.target_macs", "not a fraction in (0, 1)"),
    (lambda c, _: c["stages"]["prune"].update(target_params=0.5), "stages.prune.target_macs", "not both"),
    (lambda c, _: c["stages"]["prune"].pop("target_macs"), "stages.prune.target_macs", "give target_macs"),
    (lambda c, _: c["stages"]["prune"].update(ignore=["layers.0", "layers.99"]), "stages.prune.ignore[1]",
     "no module 'layers.99' in teacher 'cnn'; its modules: layers, layers.0, layers.1"),
    (lambda c, _: c["stages"]["prune"].update(epochs=3), "stages.prune.epochs", "epochs_per_round"),
    (lambda c, _: c["stages"]["prune"].update(rounds=0), "stages.prune.rounds", "greater than or equal to 1"),
    (lambda c, _: c.update(teacher={"model": "mlp", "train": {"epochs": 1}}) or c["stages"]["prune"].update(
        method="bn_scale"), "stages.prune.method", "teacher 'mlp' has no batch norm"),
    (lambda c, _: c.update(student={"model": "mlp"}), "student.model", "is 'mlp', not the teacher's 'cnn'"),
    (lambda c, _: c.update(student={"model": "cnn", "kwargs": {"channels": [8, 16]}}), "student.kwargs",
     "differ from the teacher's"),
    (lambda c, _: c.update(student={"model": "cnn", "kwargs": {"channels": [16, 32]}, "checkpoint": "pipeline.yaml"}),
     "student.checkpoint", "the pruned teacher's weights are the start"),
    (lambda c, tmp: c.update(data=text_data(tmp)) or bert(c) or c["stages"]["prune"].update(
        ignore=["model.bert.encoder.layer.3"], method="magnitude"), "stages.prune.ignore[0]",
     "no module 'model.bert.encoder.layer.3' in teacher 'hf-config:bert'"),
])
def test_bad_prune_inputs_are_one_line_naming_the_field(pruned_config, tmp_path, capsys, change, field, words):
    path = write(tmp_path, pruned_config)  # a file that exists, for student.checkpoint
    change(pruned_config, tmp_path)
    path = write(tmp_path, pruned_config)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: {field}: "), err
    assert words in err[0]


def test_a_pruned_pipeline_without_a_student_section_validates(pruned_config, tmp_path, capsys):
    assert main(["validate", str(write(tmp_path, pruned_config))]) == 0
    pruned_config["stages"].pop("prune")
    assert main(["validate", str(write(tmp_path, pruned_config))]) == 2  # without prune a student is needed
    assert "student: field required" in capsys.readouterr().err


def text_pruned_config(tmp_path) -> dict:
    """A tiny BERT teacher on texts written here, pruned by heads and MLP widths."""
    from tests.test_text_pipeline import write_texts

    write_texts(tmp_path / "train.csv", 240, seed=1)
    write_texts(tmp_path / "val.csv", 60, seed=2)
    return {
        "name": "tiny-text-pruned", "seed": 0,
        "data": {"source": "text", "path": "train.csv", "val_path": "val.csv",
                 "text": {"max_length": 24, "vocab_size": 200}},
        "teacher": {"model": "hf-config:bert", "kwargs": {"layers": 2, "hidden": 32, "heads": 4},
                    "train": {"epochs": 2, "batch_size": 32, "lr": 0.003, "progress": False}},
        "stages": {
            "prune": {"target_macs": 0.6, "method": "taylor", "rounds": 2, "epochs_per_round": 1, "taylor_batches": 2,
                      "batch_size": 32, "lr": 0.003, "progress": False},
            "distill": {"epochs": 1, "batch_size": 32, "lr": 0.003, "progress": False},
            "export": {},
            "build": {"targets": ["onnxruntime:fp32"]},
            "benchmark": {"batch_sizes": [1], "runs": 3, "min_seconds": 0, "warmup": 1, "warmup_seconds": 0,
                          "rounds": 1, "memory": False},
            "report": {},
        },
    }


def test_a_bert_teacher_loses_whole_heads_and_mlp_width_but_keeps_its_hidden_width(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run(write(tmp_path, text_pruned_config(tmp_path)), run_dir) in (0, 3)
    stages = read_json(run_dir / "run.json")["stages"]
    assert all(entry["status"] == "done" for entry in stages.values()), {k: v["status"] for k, v in stages.items()}
    prune = stages["prune"]["outputs"]
    assert prune["macs_ratio"] <= 0.6
    widths = {row["name"]: row for row in prune["layers"]}
    query = widths["model.bert.encoder.layer.0.attention.self.query"]
    assert query["in_after"] == query["in_before"] == 32  # the residual stream keeps its width
    assert query["out_after"] % 8 == 0 and query["out_after"] < 32  # whole heads of 8 went
    assert any(r["out_after"] < r["out_before"] for n, r in widths.items() if n.endswith("intermediate.dense"))
    student, spec = load_model(run_dir / stages["distill"]["outputs"]["checkpoint"])
    attention = student.get_submodule("model.bert.encoder.layer.0.attention.self")
    assert attention.num_attention_heads == query["out_after"] // 8 and spec.pruned
    assert (run_dir / "stages/build/student.onnxruntime.fp32/model.onnx").is_file()
    assert [h["heads_before"] for h in prune["heads"]] == [4, 4]
    assert prune["heads"][0]["heads_after"] == query["out_after"] // 8
    report = (run_dir / "report.md").read_text()
    assert "Attention heads" in report and "`model.bert.encoder.layer.0.attention.self` | 4 → " in report
