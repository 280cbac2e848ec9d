from pathlib import Path

import pytest

from compress.cli import main
from compress.runner import load_pipeline, parse_pipeline
from compress.core.errors import ConfigError


def test_tiny_config_is_valid(tiny_config):
    cfg = parse_pipeline(tiny_config)
    assert list(cfg.stages) == ["teacher", "distill", "export", "build", "benchmark", "report"]
    assert cfg.stage("distill").temperature == 4.0
    assert cfg.stage("build").targets == ["onnxruntime:fp32"]


def test_absent_core_stages_get_defaults(tiny_config):
    tiny_config["stages"] = {}
    cfg = parse_pipeline(tiny_config)
    assert cfg.stage("benchmark").batch_sizes == [1, 32]
    assert cfg.stage("distill").alpha == 0.9


@pytest.mark.parametrize("mutate, path, words", [
    (lambda c: c["stages"]["distill"].update(temperature=0), "stages.distill.temperature", "greater than 0"),
    (lambda c: c["stages"]["distill"].update(epochs="many"), "stages.distill.epochs", "integer"),
    (lambda c: c["stages"]["distill"].update(temprature=3), "stages.distill.temprature", "unknown field"),
    (lambda c: c["stages"].update(distil={}), "stages.distil", "unknown stage"),
    (lambda c: c["student"].update(model="resnet9000"), "student.model", "unknown model"),
    (lambda c: c["teacher"].update(model="nosuchmodule_xyz:factory"), "teacher.model", "cannot import"),
    (lambda c: c.pop("student"), "student", "field required"),
    (lambda c: c["data"].update(source="npz"), "data", "needs data.path"),
    (lambda c: c["data"].update(source="npz", path="missing.npz"), "data.path", "file not found"),
    (lambda c: c["teacher"].update(checkpoint="nope.pt"), "teacher.checkpoint", "file not found"),
    (lambda c: c["teacher"].pop("train"), "teacher", "checkpoint or a train section"),
    (lambda c: c.update(name="bad/name"), "name", "letters"),
    (lambda c: c["stages"]["build"].update(targets=["tensorflow"]), "stages.build.targets", "unknown backend"),
    (lambda c: c["stages"]["benchmark"].update(batch_sizes=[]), "stages.benchmark.batch_sizes", "at least 1"),
    (lambda c: c["stages"]["benchmark"].update(rounds=0), "stages.benchmark.rounds", "greater than or equal to 1"),
    (lambda c: c["stages"]["benchmark"].update(rounds="many"), "stages.benchmark.rounds", "valid integer"),
    (lambda c: c["stages"]["benchmark"].update(memory="sometimes"), "stages.benchmark.memory", "valid boolean"),
    (lambda c: c.setdefault("gates", {}).update(max_memory_mb=0), "gates.max_memory_mb", "greater than 0"),
    (lambda c: (c["stages"]["benchmark"].update(memory=False), c.setdefault("gates", {}).update(max_memory_mb=64)),
     "stages.benchmark.memory", "gates.max_memory_mb needs each artifact's memory measured"),
    # what the run would refuse later, refused by validate first
    (lambda c: c.setdefault("gates", {}).update(max_latency_ms=-1), "gates.max_latency_ms", "must be > 0 ms, got -1"),
    (lambda c: c.setdefault("gates", {}).update(max_latency_ms={1: 5.0, 8: -2}), "gates.max_latency_ms",
     "batch 8: must be > 0 ms, got -2"),
    (lambda c: c.setdefault("gates", {}).update(max_latency_ms={"b8": 5.0}), "gates.max_latency_ms",
     "batch 'b8' is not a batch size"),
    (lambda c: c.setdefault("gates", {}).update(max_latency_ms={1: "fast"}), "gates.max_latency_ms",
     "batch 1: 'fast' is not a number of milliseconds"),
    (lambda c: c.setdefault("gates", {}).update(max_latency_ms={1: 5.0, 16: 9.0}), "stages.benchmark.batch_sizes",
     "[1, 8] has no batch 16, but gates.max_latency_ms sets a limit for it"),
    (lambda c: c["teacher"]["train"].update(epochs=100_000), "teacher.train.epochs",
     "100000 epochs is beyond any training budget (at most 10,000)"),
    (lambda c: c["stages"]["distill"].update(epochs=20_000), "stages.distill.epochs", "beyond any training budget"),
    (lambda c: c["stages"].update(quantize={"mode": "qat", "epochs": 50_000}), "stages.quantize.epochs",
     "beyond any training budget"),
    # a top-1 drop is a fraction: 5 would let any model pass
    (lambda c: c.setdefault("gates", {}).update(max_accuracy_drop=5), "gates.max_accuracy_drop",
     "5 is not a fraction: a top-1 drop is a fraction below 1 (0.02 = 2 points; for 5 points write 0.05)"),
    (lambda c: c["stages"].update(quantize={"max_accuracy_drop": 1.5}), "stages.quantize.max_accuracy_drop",
     "1.5 is not a fraction"),
    (lambda c: c["stages"]["build"].update(targets=["openvino:int8"], accuracy_control={"max_accuracy_drop": 1}),
     "stages.build.accuracy_control.max_accuracy_drop", "1 is not a fraction"),
    (lambda c: c.update(threads=0), "threads", "greater than or equal to 1"),
    (lambda c: c["stages"]["distill"].update(threads=0), "stages.distill.threads", "greater than or equal to 1"),
    (lambda c: c["teacher"]["train"].update(threads="all"), "teacher.train.threads", "valid integer"),
])
def test_bad_field_names_file_and_path(tiny_config, tmp_path, mutate, path, words):
    mutate(tiny_config)
    with pytest.raises(ConfigError) as info:
        parse_pipeline(tiny_config, "pipeline.yaml", tmp_path)
    assert info.value.path == path
    assert words in info.value.message
    assert str(info.value).startswith(f"pipeline.yaml: {path}: ")


def test_cli_bad_config_is_one_line_and_exit_2(tiny_config, write_pipeline, capsys):
    tiny_config["stages"]["distill"]["temperature"] = -1
    path = write_pipeline(tiny_config)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: stages.distill.temperature: Input should be greater than 0"]


def test_invalid_yaml_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert main(["validate", str(bad)]) == 2
    assert main(["validate", str(tmp_path / "absent.yaml")]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err and "absent.yaml: file not found" in err


def test_relative_paths_resolve_against_the_yaml(tiny_config, tmp_path):
    import numpy as np

    (tmp_path / "sub").mkdir()
    np.savez(tmp_path / "sub" / "d.npz", x=np.zeros((20, 4, 4), np.float32), y=np.arange(20) % 2)
    tiny_config["data"] = {"source": "npz", "path": "sub/d.npz"}
    cfg = parse_pipeline(tiny_config, "p.yaml", tmp_path)
    assert cfg.data.path == (tmp_path / "sub" / "d.npz").resolve()


def test_init_writes_a_valid_commented_example(tmp_path):
    target = tmp_path / "pipeline.yaml"
    assert main(["init", str(target)]) == 0
    assert "# compress pipeline" in target.read_text()
    assert load_pipeline(target).name == "digits"
    assert main(["init", str(target)]) == 2  # no silent overwrite


def test_example_pipeline_matches_init_template():
    from compress.cli.template import PIPELINE_TEMPLATE

    example = Path(__file__).parents[1] / "examples" / "digits" / "pipeline.yaml"
    assert example.read_text() == PIPELINE_TEMPLATE


def test_latency_limits_at_measured_batches_and_sane_epochs_pass(tiny_config):
    tiny_config["gates"] = {"max_latency_ms": {1: 5, "8": 20.5}}
    tiny_config["stages"]["distill"]["epochs"] = 10_000
    cfg = parse_pipeline(tiny_config)
    assert cfg.gates.max_latency_ms == {1: 5.0, 8: 20.5}
    tiny_config["gates"] = {"max_latency_ms": 3}
    assert parse_pipeline(tiny_config).gates.max_latency_ms == 3.0
