"""Text classification end to end: texts -> tokenizer trained here -> BERT teacher -> Transformer-KD student ->
ONNX (parity at several lengths) -> ONNX Runtime / OpenVINO engines -> benchmark over (batch, length) -> report.

The models are tiny random-weight `hf-config:bert` classifiers and the texts are written here, so this
runs offline in about a minute; what it checks is that every stage takes named int64 inputs, not accuracy.
"""

from __future__ import annotations

import json
import random

import pytest
import yaml

from compress.cli import main

TOPICS = {
    "sport": ["match", "goal", "team", "coach", "league", "score", "player"],
    "weather": ["rain", "storm", "sunny", "wind", "cloud", "forecast", "snow"],
    "money": ["bank", "market", "price", "stock", "budget", "loan", "profit"],
}
FILLER = ["the", "a", "today", "this", "week", "people", "said", "and", "in", "city", "new", "very"]


def write_texts(path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = ["text,label"]
    for i in range(count):
        topic = sorted(TOPICS)[i % len(TOPICS)]
        words = [rng.choice(TOPICS[topic]) if rng.random() < 0.4 else rng.choice(FILLER)
                 for _ in range(rng.randint(3, 18))]
        lines.append(f"{' '.join(words)},{topic}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def text_config(tmp_path) -> dict:
    write_texts(tmp_path / "train.csv", 240, seed=1)
    write_texts(tmp_path / "val.csv", 60, seed=2)
    return {
        "name": "tiny-text",
        "data": {"source": "text", "path": "train.csv", "val_path": "val.csv",
                 "text": {"max_length": 24, "vocab_size": 200}},
        "teacher": {"model": "hf-config:bert", "kwargs": {"layers": 2, "hidden": 32, "heads": 2},
                    "train": {"epochs": 2, "batch_size": 32, "lr": 0.003, "progress": False}},
        "student": {"model": "hf-config:bert", "kwargs": {"layers": 1, "hidden": 32, "heads": 2},
                    "init_from_teacher": "every_other"},
        "stages": {
            "distill": {"epochs": 1, "batch_size": 32, "lr": 0.003, "progress": False,
                        "losses": [{"name": "kd", "weight": 0.5, "temperature": 2}, {"name": "ce", "weight": 0.5},
                                   {"name": "tinybert_hidden", "weight": 0.1, "layer_map": {0: 0, 1: 2}},
                                   {"name": "minilm", "weight": 0.1}]},
            "export": {},
            "build": {"targets": ["onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32", "tensorrt:fp16"],
                      "transformer_optimize": True},
            "benchmark": {"batch_sizes": [1, 4], "runs": 3, "min_seconds": 0, "warmup": 1, "warmup_seconds": 0,
                          "rounds": 1, "memory": False, "sequence_lengths": [8, 24]},
            "report": {},
        },
    }


# Benchmark and report always run: tests that are about other stages time one run at one length.
QUICK_BENCHMARK = {"batch_sizes": [1], "runs": 1, "min_seconds": 0, "warmup": 0, "warmup_seconds": 0, "rounds": 1,
                   "memory": False, "sequence_lengths": [24]}


def write(tmp_path, config: dict):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_a_text_pipeline_runs_every_stage_on_token_ids(text_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", str(write(tmp_path, text_config)), "--run-dir", str(run_dir)]) in (0, 3)
    out = capsys.readouterr().out
    assert "student starts from the teacher's embeddings and layers [0]" in out
    assert "teacher runs on every batch (the Transformer losses read its hidden states and attention)" in out

    export = run_dir / "stages" / "export"
    parity = json.loads((export / "parity.json").read_text())
    assert parity["passed"] and set(parity["sequence_lengths"]) == {"8", "12", "24"}
    assert all(r["max_abs_error"] < 1e-4 for r in parity["sequence_lengths"].values())
    tokenizer = json.loads((export / "tokenizer.json").read_text())
    assert tokenizer["model"]["type"] == "WordPiece" and "[CLS]" in tokenizer["model"]["vocab"]

    engine = json.loads((run_dir / "stages" / "build" / "student.onnxruntime.int8" / "engine.json").read_text())
    assert [i["name"] for i in engine["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    # int8 form chosen by measurement at the benchmark's batch sizes, scored on the parity check's inputs and budget
    choice = engine["quantization"]["choice"]
    assert choice["min_agreement"] == 0.99 and choice["checked_on"] == "the given check inputs"
    assert choice["checked_on_samples"] == 60 and choice["timing"]["batch_sizes"] == [1, 4]
    assert choice["chosen"] in choice["candidates"] and choice["why"]
    built = json.loads((run_dir / "run.json").read_text())["stages"]["build"]["outputs"]["engines"]
    entry = next(e for e in built if e["backend"] == "onnxruntime" and e["precision"] == "int8")
    assert entry["int8_choice"] == {"chosen": choice["chosen"], "why": choice["why"]}
    assert f"onnxruntime int8: ships {choice['chosen']}, {choice['why']}" in out
    fused = json.loads((run_dir / "stages" / "build" / "student.onnxruntime.fp32" / "engine.json").read_text())
    assert fused["transformer_optimized"]["model_type"] == "bert"
    script = (run_dir / "stages" / "build" / "student.tensorrt.fp16" / "build_engine.sh").read_text()
    assert "--maxShapes=input_ids:32x24,attention_mask:32x24,token_type_ids:32x24" in script

    results = json.loads((run_dir / "stages" / "benchmark" / "results.json").read_text())
    assert results["task"] == "text-classification" and results["sequence_length"] == 24
    artifacts = {(r["model"], r["backend"], r["precision"]) for r in results["rows"]}
    assert ("student", "openvino", "fp32") in artifacts and ("student", "onnxruntime", "int8") in artifacts
    assert all(r["sequence_length"] == 24 and r["tokens_per_s"] > 0 for r in results["rows"])
    grid = {(r["backend"], r["batch_size"], r["sequence_length"]) for r in results["sequence_grid"]}
    assert {("onnxruntime", 4, 8), ("onnxruntime", 4, 24), ("openvino", 1, 8)} <= grid
    fp32 = next(r for r in results["rows"] if r["backend"] == "onnxruntime" and r["precision"] == "fp32")
    torch_row = next(r for r in results["rows"] if r["model"] == "student" and r["backend"] == "torch")
    # the fused engine scores what torch scores (one of 60 texts may flip on a rounding difference)
    assert abs(fp32["accuracy"]["top1"] - torch_row["accuracy"]["top1"]) <= 1 / 60 + 1e-9

    report = (run_dir / "report.md").read_text()
    assert "## Latency by sequence length" in report and "b4@24" in report
    assert "latency by sequence length" in (run_dir / "report.html").read_text()


def test_a_rerun_with_another_text_file_reruns_what_reads_it(text_config, tmp_path):
    text_config["stages"] = {"distill": {"epochs": 1, "batch_size": 32, "progress": False},
                             "benchmark": QUICK_BENCHMARK}
    text_config["teacher"]["train"]["epochs"] = 1
    path = write(tmp_path, text_config)
    run_dir = tmp_path / "run"
    assert main(["run", str(path), "--run-dir", str(run_dir)]) == 0
    first = json.loads((run_dir / "run.json").read_text())["stages"]["teacher"]["key"]
    write_texts(tmp_path / "train.csv", 240, seed=3)
    assert main(["run", str(path), "--run-dir", str(run_dir)]) == 0
    assert json.loads((run_dir / "run.json").read_text())["stages"]["teacher"]["key"] != first


BAD_CONFIGS = [
    (lambda c: c.update(task="image-classification"), "task", "set task: text-classification"),
    (lambda c: c["data"].update(source="digits", path=None, val_path=None), "data",
     "data.text configures a text source"),
    (lambda c: c["stages"]["distill"]["losses"].append({"name": "tinybert_attention", "layer_map": {1: 5}}),
     "stages.distill.losses.4", "5"),
    (lambda c: c["student"]["kwargs"].update(heads=4), "stages.distill.losses.3", "head"),
    (lambda c: c["stages"]["benchmark"].update(sequence_lengths=[8, 99]), "stages.benchmark.sequence_lengths",
     "outside 1..24"),
    (lambda c: c["stages"].update(quantize={"mode": "ptq"}), "stages.quantize.mode", "openvino:int8"),
    (lambda c: c["student"].update(model="hf-config:gpt9"), "student.model", "unknown hf-config architecture"),
    (lambda c: c["stages"]["build"].update(targets=["openvino:fp32"]), "stages.build.transformer_optimize",
     "onnxruntime:fp32"),
    (lambda c: c["stages"]["build"]["tensorrt"].update(max_sequence=16) if "tensorrt" in c["stages"]["build"]
     else c["stages"]["build"].update(tensorrt={"max_sequence": 16}), "stages.build.tensorrt.max_sequence",
     "below data.text.max_length"),
    (lambda c: c["stages"]["distill"].update(recipe="patient"), "stages.distill.recipe", "crops images"),
]


@pytest.mark.parametrize("change,field,words", BAD_CONFIGS)
def test_bad_text_configs_are_one_line_naming_the_field(text_config, tmp_path, capsys, change, field, words):
    change(text_config)
    assert main(["validate", str(write(tmp_path, text_config))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0] and words in err[0], err


def test_a_tokenizer_file_that_is_not_one_is_named_and_nothing_runs(text_config, tmp_path, capsys):
    (tmp_path / "tokenizer.json").write_text("{not json")
    text_config["data"]["text"]["tokenizer"] = "tokenizer.json"
    run_dir = tmp_path / "run"
    assert main(["run", str(write(tmp_path, text_config)), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizer.json" in err[0] and "data.text.tokenizer" in err[0], err
    assert not (run_dir / "stages" / "teacher" / "teacher.pt").exists()


def test_a_users_tokenizer_is_used_and_shipped_as_given(text_config, tmp_path):
    from compress.tasks.text_classification.tokenizer import save_tokenizer, train_wordpiece

    texts = [line.split(",")[0] for line in (tmp_path / "train.csv").read_text().splitlines()[1:]]
    save_tokenizer(train_wordpiece(texts, vocab_size=150), tmp_path / "tokenizer.json")
    text_config["data"]["text"]["tokenizer"] = "tokenizer.json"
    text_config["teacher"]["train"]["epochs"] = 1
    text_config["stages"] = {"distill": {"epochs": 1, "batch_size": 32, "progress": False}, "export": {},
                             "benchmark": QUICK_BENCHMARK}
    run_dir = tmp_path / "run"
    assert main(["run", str(write(tmp_path, text_config)), "--run-dir", str(run_dir)]) == 0
    shipped = json.loads((run_dir / "stages" / "export" / "tokenizer.json").read_text())
    assert shipped["model"]["vocab"] == json.loads((tmp_path / "tokenizer.json").read_text())["model"]["vocab"]


def test_validate_prints_the_text_files_fingerprint_and_counts_per_class(text_config, tmp_path, capsys):
    assert main(["validate", str(write(tmp_path, text_config))]) == 0
    out = capsys.readouterr().out
    assert "data: text, 2 files, fingerprint" in out
    assert "samples per class (3 classes): money 80, sport 80, weather 80" in out


def test_an_hf_folder_teacher_brings_its_weights_and_tokenizer(text_config, tmp_path, capsys):
    """A local Hugging Face sequence classifier (config.json + model.safetensors + tokenizer.json) as teacher:
    its weights load (a head for another class count is replaced, and the log says so), its tokenizer is used."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from compress.tasks.text_classification.tokenizer import save_tokenizer, train_wordpiece

    folder = tmp_path / "hf_teacher"
    texts = [line.split(",")[0] for line in (tmp_path / "train.csv").read_text().splitlines()[1:]]
    tokenizer = train_wordpiece(texts, vocab_size=150)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, num_labels=5)
    BertForSequenceClassification(config).save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    text_config["teacher"] = {"model": "hf:hf_teacher", "train": {"epochs": 1, "batch_size": 32, "progress": False}}
    text_config["data"]["text"]["tokenizer"] = "hf_teacher"
    text_config["stages"] = {"distill": {"epochs": 1, "batch_size": 32, "progress": False}, "export": {},
                             "benchmark": QUICK_BENCHMARK}
    capsys.readouterr()  # what importing transformers logged above
    # every_other copies teacher layers: a student of another width is refused before anything trains
    assert main(["run", str(write(tmp_path, text_config)), "--run-dir", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    assert "has a 5-class head, the data has 3 classes" in captured.out and "replaced (fresh weights" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "student.init_from_teacher: teacher layer 0: 'intermediate.dense.weight'" in err[0], err
    assert not (tmp_path / "run" / "stages" / "distill" / "student.pt").exists()

    text_config["student"]["kwargs"]["intermediate"] = 64
    assert main(["run", str(write(tmp_path, text_config)), "--run-dir", str(tmp_path / "run")]) == 0
    assert "student starts from the teacher's embeddings and layers [0]" in capsys.readouterr().out
