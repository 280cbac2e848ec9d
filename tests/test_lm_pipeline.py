"""Causal LMs end to end: the Python standard library's sources -> a byte-level BPE trained here -> a Llama
teacher -> the student alone and the student distilled -> onnxruntime-genai folders (fp32 with parity against
torch, int4 weight-only) -> perplexity and tokens/s of each -> report; and the bad inputs each refused in one
line naming the file and field, with exit code 2.

The models are tiny and train for one epoch on a few dozen files, so this checks that every stage works,
not that KD helps (benchmarks/causal_lm.py measures that).
"""

from __future__ import annotations

import json

import pytest
import yaml

from compress.cli import main
from dotted import changed

pytest.importorskip("onnxruntime_genai")


def lm_config(**changes) -> dict:
    config = {
        "name": "tiny-lm", "seed": 0, "task": "causal-lm",
        # the first 13 modules (before _pydecimal's 229k characters): train, val and test all non-empty at seed 0
        "data": {"source": "python-stdlib", "val_fraction": 0.15, "test_fraction": 0.25,
                 "corpus": {"block_size": 32, "vocab_size": 320, "max_documents": 13}},
        "teacher": {"model": "hf-config:llama", "kwargs": {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2},
                    "train": {"epochs": 1, "batch_size": 16, "lr": 0.003}},
        "student": {"model": "hf-config:llama", "kwargs": {"layers": 1, "hidden": 64, "heads": 4, "kv_heads": 2}},
        "stages": {
            "baseline": {},
            "distill": {"epochs": 1, "batch_size": 16, "lr": 0.003, "loss": "jsd", "beta": 0.5, "eval_blocks": 8},
            "export": {"prompts": 2, "prompt_tokens": 12, "new_tokens": 8},
            "build": {"targets": ["onnxruntime:fp32", "onnxruntime:int4"]},
            "benchmark": {"prompt_lengths": [8, 16], "new_tokens": 4, "batch_sizes": [1, 2], "rounds": 1,
                          "eval_blocks": 6},
            "report": {},
        },
        "gates": {"max_perplexity_increase": 10.0},
    }
    return changed(config, changes)


def write(tmp_path, config: dict):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def finished_run(lm_run):
    """The tiny pipeline run once for the session (tests/conftest.py), with a deploy stage to a local: device."""
    return lm_run[0], lm_run[1]


@pytest.mark.slow
def test_a_causal_lm_pipeline_runs_every_stage(finished_run):
    code, run_dir = finished_run
    assert code == 0
    record = json.loads((run_dir / "run.json").read_text())
    assert [name for name, entry in record["stages"].items() if entry["status"] == "done"] == \
        ["teacher", "baseline", "distill", "export", "build", "benchmark", "report", "deploy"]
    teacher = record["stages"]["teacher"]["outputs"]
    assert teacher["corpus"]["splits"]["train"]["blocks"] > 0 and teacher["has_test"]
    export = record["stages"]["export"]["outputs"]["engines"]
    for name in ("teacher-onnxruntime-fp32", "student-onnxruntime-fp32"):
        parity = export[name]["parity"]
        assert parity["max_abs_diff"] < 1e-3 and parity["identical_prompts"] == parity["prompts"] == 2
    built = record["stages"]["build"]["outputs"]["engines"]
    int4_folder = run_dir / built["student-onnxruntime-int4"]["folder"]
    assert (int4_folder / "genai_config.json").is_file()
    assert built["student-onnxruntime-int4"]["size_mb"] < built["student-onnxruntime-fp32"]["size_mb"]


def test_every_artifact_is_measured_on_the_same_blocks(finished_run):
    _, run_dir = finished_run
    results = json.loads((run_dir / "stages/benchmark/results.json").read_text())
    rows = {r["artifact"]: r for r in results["rows"]}
    assert set(rows) == {"teacher-torch", "baseline-torch", "distill-torch", "teacher-onnxruntime-fp32",
                         "student-onnxruntime-fp32", "student-onnxruntime-int4"}
    # the fp32 engine scores what torch scores: perplexity from its own prefill logits
    assert rows["student-onnxruntime-fp32"]["perplexity"] == pytest.approx(rows["distill-torch"]["perplexity"],
                                                                           rel=1e-3)
    assert rows["student-onnxruntime-fp32"]["agreement"] == pytest.approx(rows["distill-torch"]["agreement"], abs=0.01)
    for name in ("teacher-onnxruntime-fp32", "student-onnxruntime-fp32", "student-onnxruntime-int4"):
        assert rows[name]["decode_tokens_per_s"]["1"] > 0 and rows[name]["decode_tokens_per_s"]["2"] > 0
        assert set(rows[name]["ttft_s"]) == {"8", "16"}
        assert 10 < rows[name]["peak_memory_mb"] < 4000  # the engine alone in a fresh process
    generations = results["generations"]
    assert len(generations["prompts"]) == 2 and len(generations["by"]) == 6


def test_the_report_says_what_kd_bought_and_judges_the_gates(finished_run):
    _, run_dir = finished_run
    report = (run_dir / "report.md").read_text()
    assert "## What distillation bought" in report and "paired bootstrap over" in report
    assert "## What weight-only quantization cost" in report and "student-onnxruntime-int4" in report
    assert "## Generations" in report
    assert "<table>" in (run_dir / "report.html").read_text()
    summary = json.loads((run_dir / "stages/report/report.json").read_text())
    assert summary["gates"][0]["gate"] == "max_perplexity_increase" and summary["gates"][0]["passed"]


def test_the_tokens_per_s_gate_fails_a_recommendation_below_it(finished_run):
    from compress.runner import load_pipeline
    from compress.stages.lm.lm_report import gates, recommend

    _, run_dir = finished_run
    pipeline = load_pipeline(run_dir / "pipeline.yaml")
    rows = json.loads((run_dir / "stages/benchmark/results.json").read_text())["rows"]
    chosen = recommend(rows, pipeline)
    assert chosen["role"] == "distill" and chosen["artifact"].startswith("student-onnxruntime-")
    fastest = chosen["decode_tokens_per_s"]["1"]
    pipeline.gates.min_tokens_per_s = fastest * 10
    verdicts = {g["gate"]: g for g in gates(pipeline, {r["artifact"]: r for r in rows}, chosen)}
    assert not verdicts["min_tokens_per_s"]["passed"] and verdicts["max_perplexity_increase"]["passed"]
    pipeline.gates.min_tokens_per_s = fastest / 10
    assert all(g["passed"] for g in gates(pipeline, {r["artifact"]: r for r in rows}, chosen))


def test_run_commands_of_the_shared_report_say_how_to_rebuild_an_lm_report(finished_run, capsys):
    _, run_dir = finished_run
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--force report" in err
    assert main(["compare", str(run_dir), str(run_dir)]) == 2
    capsys.readouterr()
    assert main(["runs", str(run_dir.parent)]) == 0
    assert run_dir.name in capsys.readouterr().out


def test_a_rerun_reuses_every_stage(lm_run, capsys):
    _, run_dir, _, _ = lm_run
    code = main(["run", str(run_dir.parent / "pipeline.yaml"), "--run-dir", str(run_dir)])
    out = capsys.readouterr().out
    assert code == 0 and "running" not in out, out


def test_depth_pruning_starts_both_students_from_the_teachers_most_important_layers(tmp_path):
    config = lm_config(**{"student": None, "stages.prune": {"layers": 1, "importance": "block_influence",
                                                             "calibration_blocks": 4}})
    for stage in ("export", "build", "benchmark", "report"):
        config["stages"].pop(stage)
    config.pop("gates")
    assert main(["run", str(write(tmp_path, config)), "--run-dir", str(tmp_path / "run")]) == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    prune = record["prune"]["outputs"]
    assert len(prune["importance"]) == 2 and len(prune["kept_layers"]) == 1
    assert prune["kept_layers"] == [max(range(2), key=lambda i: prune["importance"][i])]
    assert record["distill"]["outputs"]["layers"] == record["baseline"]["outputs"]["layers"] == 1
    assert prune["params"] < prune["teacher_params"]


BAD = [
    ({"data.corpus.block_size": 100000}, "data.corpus.block_size"),
    ({"teacher.kwargs": {"layers": 2, "hidden": 60, "heads": 8}}, "teacher.kwargs"),
    ({"teacher.kwargs": {"depth": 2}}, "teacher.kwargs"),
    ({"teacher.train": None}, "teacher: the teacher needs"),
    ({"student.model": "cnn"}, "student.model"),
    ({"stages.build": {"targets": ["openvino:int2"]}}, "stages.build.targets"),
    ({"stages.distill": {"loss": "kl"}}, "stages.distill.loss"),
    ({"stages.distill": {"loss": "jsd", "teacher_top_k": 8}}, "stages.distill.teacher_top_k"),
    ({"stages.quantize": {}}, "stages.quantize"),
    ({"data.image_size": 32}, "data.image_size"),
    ({"stages.prune": {"layers": 0}}, "stages.prune.layers"),
    ({"stages.prune": {"calibration_blocks": 4}}, "stages.prune: give layers (depth), heads, intermediate or hidden"),
    ({"stages.prune": {"hidden": 64}}, "stages.prune.hidden: 64 channels is not fewer than the teacher's 64"),
    ({"stages.prune": {"heads": 3}}, "stages.prune.heads: the teacher's 4 query heads share 2"),
    ({"stages.prune": {"intermediate": 192}}, "stages.prune.intermediate"),
    ({"stages.prune": {"layers": 2}}, "stages.prune.layers: 2 layers is not fewer than the teacher's 2"),
]


@pytest.mark.parametrize("changes,field", BAD, ids=[field for _, field in BAD])
def test_bad_configs_are_one_line_naming_the_field(tmp_path, capsys, changes, field):
    code = main(["validate", str(write(tmp_path, lm_config(**changes)))])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "pipeline.yaml" in err and field in err, err


def test_an_empty_corpus_and_a_corpus_shorter_than_a_block_are_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    config = lm_config(**{"data.source": "corpus", "data.path": "empty"})
    assert main(["run", str(write(tmp_path, config)), "--run-dir", str(tmp_path / "run")]) == 2
    assert "data.path" in capsys.readouterr().err
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "a.txt").write_text("just a few words\n")
    config = lm_config(**{"data.source": "corpus", "data.path": "short", "data.val_fraction": 0.01,
                          "data.test_fraction": 0.01})
    assert main(["run", str(write(tmp_path, config)), "--run-dir", str(tmp_path / "run2")]) == 2
    assert "data.block_size" in capsys.readouterr().err


def test_prompts_that_are_not_utf8_and_layer_maps_out_of_range_are_refused(tmp_path, capsys):
    (tmp_path / "prompts.txt").write_bytes(b"def f(\xff\n")
    from compress.stages.lm.engines import read_prompts
    from compress.core.errors import ConfigError

    with pytest.raises(ConfigError, match="data.corpus.prompts.*not UTF-8"):
        read_prompts(tmp_path / "prompts.txt", "pipeline.yaml")
    from compress.tasks.causal_lm.token_losses import check_layer_map

    assert "pair 0" in check_layer_map([(3, 1)], 1, 2)


def test_an_hf_folder_without_a_causal_lm_head_is_refused(tmp_path, capsys):
    import transformers

    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    code = main(["validate", str(write(tmp_path, lm_config(**{"teacher.model": f"hf:{tmp_path / 'bert'}",
                                                              "teacher.kwargs": {}})))])
    err = capsys.readouterr().err
    assert code == 2 and "teacher.model" in err and "not a causal LM head" in err


def hf_llama(folder, vocab: int, tokenizer_vocab: int, seed_text: str):
    """A tiny local Hugging Face causal LM with its own tokenizer.json (a byte-level BPE of tokenizer_vocab)."""
    import sysconfig
    from pathlib import Path

    import transformers

    from compress.tasks.causal_lm.corpus import save_hf_tokenizer, train_tokenizer

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:6]
    texts = [seed_text] + [f.read_text(errors="replace") for f in files]
    save_hf_tokenizer(train_tokenizer(texts, tokenizer_vocab), folder)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_teacher_and_student_with_different_tokenizers_are_refused(tmp_path, capsys):
    teacher = hf_llama(tmp_path / "teacher", 300, 300, "alpha beta")
    student = hf_llama(tmp_path / "student", 300, 280, "gamma delta")
    config = lm_config(**{"teacher.model": f"hf:{teacher}", "teacher.kwargs": {}, "teacher.train": None,
                          "student.model": f"hf:{student}", "student.kwargs": {}})
    capsys.readouterr()
    assert main(["validate", str(write(tmp_path, config))]) == 2
    err = capsys.readouterr().err
    assert "student.model" in err and "tokenizer" in err and len(err.strip().splitlines()) == 1


def test_a_tokenizer_larger_than_the_teachers_embeddings_is_refused_before_training(tmp_path, capsys):
    teacher = hf_llama(tmp_path / "teacher", 260, 300, "alpha beta")
    config = lm_config(**{"teacher.model": f"hf:{teacher}", "teacher.kwargs": {}, "teacher.train": None})
    config["stages"] = {"distill": config["stages"]["distill"]}
    capsys.readouterr()
    code = main(["run", str(write(tmp_path, config)), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "teacher.model" in err and "300 tokens" in err and "260" in err
    assert not (tmp_path / "run" / "stages" / "distill").exists()
