"""Training a causal LM on packed blocks, alone or distilled; the model helpers and the metrics it reports.

Everything runs on tiny Llama models (vocab 300, blocks of 16 tokens) over a dozen standard-library modules,
so a whole epoch takes a fraction of a second on a CPU.
"""

from __future__ import annotations

import copy
import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.core.errors import ConfigError
from compress.tasks.causal_lm import corpus
from compress.tasks.causal_lm.lm_fit import DistillOptions, TeacherCache, TrainOptions, train_lm
from compress.tasks.causal_lm.metrics import gap_closed, paired_perplexity_ratio, score_torch_model
from compress.tasks.causal_lm.models import (build_lm, check_lm_name, check_sizes, every_other_layer,
                                             hf_folder_problem, keep_layers)

STDLIB = Path(sysconfig.get_paths()["stdlib"])
VOCAB, BLOCK, POSITIONS = 300, 16, 64
TEACHER = {"layers": 2, "hidden": 32, "heads": 2, "kv_heads": 1}
STUDENT = {"layers": 1, "hidden": 16, "heads": 2, "kv_heads": 1}
FAST = dict(epochs=1, batch_size=16, lr=3e-3, val_blocks=32)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A packed corpus (every 4th module to val) and a tiny teacher and student of its vocabulary."""
    files = sorted(f for f in STDLIB.glob("*.py") if 2_000 < f.stat().st_size < 8_000)[:12]
    assert len(files) == 12
    documents = [(f.name, f.read_text(encoding="utf-8")[:1_500]) for f in files]  # ~600 blocks: fast epochs
    tokenizer = corpus.train_tokenizer((text for _, text in documents), vocab_size=VOCAB)
    val_ids = {doc_id for doc_id, _ in documents[3::4]}
    folder = tmp_path_factory.mktemp("packed")
    meta = corpus.pack_corpus(iter(documents), tokenizer, BLOCK, folder,
                              split_of=lambda doc_id: "val" if doc_id in val_ids else "train")
    assert meta["splits"]["val"]["documents"] == 3 and meta["splits"]["train"]["documents"] == 9
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    torch.manual_seed(0)
    teacher = build_lm("hf-config:llama", TEACHER, vocab, positions=POSITIONS)
    student = build_lm("hf-config:llama", STUDENT, vocab, positions=POSITIONS)
    return {"train": corpus.TokenBlocks(folder, "train"), "val": corpus.TokenBlocks(folder, "val"),
            "teacher": teacher.eval(), "student": student, "vocab": vocab}


def _student(lm):
    """A fresh copy of the untrained student: train_lm trains in place."""
    return copy.deepcopy(lm["student"])


def _logged():
    lines: list[str] = []
    return lines, lines.append


# ---- training alone --------------------------------------------------------------------------------------

def test_one_epoch_alone_lowers_val_perplexity(lm, tmp_path):
    model = _student(lm)
    before = score_torch_model(model, lm["val"], 16, 32).perplexity
    lines, log = _logged()
    result = train_lm(model, lm["train"], lm["val"], TrainOptions(**FAST), tmp_path / "alone", log)

    assert [entry["epoch"] for entry in result["history"]] == [1] and result["best_epoch"] == 1
    after = result["history"][0]["val_perplexity"]
    assert math.isfinite(result["history"][0]["loss"])
    assert after < 0.8 * before, (before, after)
    # the returned model holds the best epoch's weights: it scores what the history says
    assert score_torch_model(model, lm["val"], 16, 32).perplexity == pytest.approx(after, rel=1e-3)
    assert result["steps_per_epoch"] == len(lm["train"]) // 16
    assert any(line.startswith("epoch 1/1: loss ") for line in lines)
    assert {p.name for p in (tmp_path / "alone").iterdir()} >= {"best.pt", "last.pt", "history.json"}


def test_a_rerun_with_more_epochs_resumes_after_the_last_checkpoint(lm, tmp_path):
    folder = tmp_path / "resume"
    first = train_lm(_student(lm), lm["train"], lm["val"], TrainOptions(**FAST), folder, _logged()[1])

    lines, log = _logged()
    second = train_lm(_student(lm), lm["train"], lm["val"], TrainOptions(**{**FAST, "epochs": 2}), folder, log)

    assert len(second["history"]) == 2
    assert second["history"][0] == first["history"][0]  # epoch 1 read back, not retrained
    assert second["history"][1]["epoch"] == 2
    assert [line.split(":")[0] for line in lines if line.startswith("epoch ")] == ["epoch 2/2"]


# ---- distillation ----------------------------------------------------------------------------------------

def test_top_k_teacher_cache_is_built_once_and_holds_the_teachers_top_k(lm, tmp_path):
    folder = tmp_path / "cached"
    lines, log = _logged()
    result = train_lm(_student(lm), lm["train"], lm["val"], TrainOptions(**FAST), folder, log,
                      teacher=lm["teacher"], distill=DistillOptions(loss="forward_kl", teacher_top_k=8))
    assert math.isfinite(result["history"][0]["loss"])
    assert any(line.startswith("teacher cache: top-8 of ") for line in lines), lines
    cache_folder = folder / "teacher_cache"
    assert sorted(p.name for p in cache_folder.glob("shard_00000.*")) == ["shard_00000.idx.npy",
                                                                          "shard_00000.lp.npy"]
    shards = len(lm["train"]) // 64 + (len(lm["train"]) % 64 > 0)
    assert len(list(cache_folder.glob("shard_*.lp.npy"))) == shards

    cache = TeacherCache(cache_folder)
    again, log_again = _logged()
    cache.build(lm["teacher"], lm["train"], 8, 16, log_again)
    assert len(again) == 1 and again[0].startswith("teacher cache: reused"), again

    picked = [0, 5, 64, len(lm["train"]) - 1]  # across shards and the last, partial one
    indices, logprobs = cache.lookup(picked)
    assert indices.shape == logprobs.shape == (len(picked), BLOCK, 8)
    assert indices.dtype == torch.long and logprobs.dtype == torch.float32
    with torch.no_grad():
        batch = torch.stack([lm["train"][i] for i in picked])
        full = torch.log_softmax(lm["teacher"](input_ids=batch[:, :-1]).logits.float(), -1)
    top = torch.topk(full, 8, dim=-1)
    torch.testing.assert_close(logprobs, top.values, atol=1e-2, rtol=1e-3)  # stored as float16
    # the cached ids are the teacher's top 8: its log-probs there are the cached ones, best first
    torch.testing.assert_close(full.gather(-1, indices), logprobs, atol=1e-2, rtol=1e-3)
    assert (indices == top.indices).float().mean() > 0.99


def test_hidden_states_of_different_widths_are_matched_through_a_trained_projection(lm, tmp_path):
    folder = tmp_path / "hidden"
    distill = DistillOptions(hidden_weight=1.0, layer_map=[(1, 2)], hidden_kind="cosine")
    result = train_lm(_student(lm), lm["train"], lm["val"], TrainOptions(**FAST), folder, _logged()[1],
                      teacher=lm["teacher"], distill=distill)
    assert math.isfinite(result["history"][0]["loss"])
    assert math.isfinite(result["history"][0]["val_perplexity"])

    state = torch.load(folder / "last.pt", weights_only=True)
    assert list(state["projections"]) == ["0.weight"]  # nn.Linear without bias, one per pair
    assert state["projections"]["0.weight"].shape == (TEACHER["hidden"], STUDENT["hidden"])
    assert torch.isfinite(state["projections"]["0.weight"]).all()


def test_on_policy_jsd_trains_on_the_students_own_samples(lm, tmp_path):
    distill = DistillOptions(loss="jsd", params={"beta": 0.5}, on_policy=1.0)
    result = train_lm(_student(lm), lm["train"], lm["val"], TrainOptions(**FAST), tmp_path / "gkd", _logged()[1],
                      teacher=lm["teacher"], distill=distill)
    entry = result["history"][0]
    assert math.isfinite(entry["loss"]) and entry["loss"] >= 0  # a JSD with no data cross-entropy mixed in
    assert math.isfinite(entry["val_perplexity"])


# ---- models ----------------------------------------------------------------------------------------------

def test_every_other_layer_of_the_teacher_is_a_working_student(lm):
    teacher = lm["teacher"]
    assert every_other_layer(2) == [0] and every_other_layer(5) == [0, 2, 4]
    student = keep_layers(teacher, every_other_layer(2)).eval()

    assert student.config.num_hidden_layers == 1 and len(student.model.layers) == 1
    assert teacher.config.num_hidden_layers == 2 and len(teacher.model.layers) == 2  # a copy: teacher untouched
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    for name, value in student.model.layers[0].state_dict().items():
        assert torch.equal(value, teacher.model.layers[0].state_dict()[name]), name
    assert student.model.layers[0].self_attn.layer_idx == 0

    prompt = lm["val"][0][:6][None]
    generated = _greedy_with_cache(student, prompt, 5)
    assert generated.shape == (1, 11)
    assert torch.equal(generated, _greedy_without_cache(student, prompt, 5))

    # keeping the teacher's layer 1 alone: its attention now reads and writes the KV cache's layer 0
    last = keep_layers(teacher, [1]).eval()
    assert last.model.layers[0].self_attn.layer_idx == 0 and teacher.model.layers[1].self_attn.layer_idx == 1
    assert torch.equal(_greedy_with_cache(last, prompt, 5), _greedy_without_cache(last, prompt, 5))


def _greedy_with_cache(model, prompt, steps):
    with torch.no_grad():
        return model.generate(prompt, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0,
                              attention_mask=torch.ones_like(prompt))


def _greedy_without_cache(model, prompt, steps):
    """Argmax of the last position's logits appended step by step, the whole sequence run each time."""
    ids = prompt
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_model_names_folders_and_sizes_are_checked_with_reasons(tmp_path):
    import transformers

    assert check_lm_name("hf-config:llama") is None and check_lm_name("hf-config:gpt2") is None
    assert "not a causal LM" in check_lm_name("cnn")
    assert "unknown causal LM architecture" in check_lm_name("hf-config:mamba")

    config = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    problem = hf_folder_problem(tmp_path / "bert")
    assert "not a causal LM head" in problem and "BertForSequenceClassification" in problem
    assert "no config.json" in hf_folder_problem(tmp_path)
    assert check_lm_name(f"hf:{tmp_path / 'bert'}") == problem

    assert "multiple" in check_sizes("hf-config:llama", {"hidden": 30, "heads": 4})
    assert "kv_heads" in check_sizes("hf-config:llama", {"hidden": 32, "heads": 4, "kv_heads": 3})
    assert "no size 'depth'" in check_sizes("hf-config:llama", {"depth": 2})
    assert check_sizes("hf-config:llama", TEACHER) is None

    with pytest.raises(ConfigError) as error:
        corpus.check_vocab_fits(500, 300, "p.yaml", "teacher.model")
    assert "teacher.model" in str(error.value) and "500" in str(error.value)
    corpus.check_vocab_fits(300, 300, "p.yaml", "teacher.model")  # equal fits


# ---- metrics ---------------------------------------------------------------------------------------------

def test_paired_perplexity_ratio_and_gap_closed(lm):
    scores = score_torch_model(lm["teacher"], lm["val"], 16, 32)
    same = paired_perplexity_ratio(scores, scores, rounds=200)
    assert same["ratio"] == 1.0 and same["low"] == 1.0 and same["high"] == 1.0
    assert same["documents"] == len(np.unique(scores.documents)) and same["rounds"] == 200

    student = score_torch_model(lm["student"], lm["val"], 16, 32)
    versus = paired_perplexity_ratio(student, scores, rounds=200)
    assert versus["ratio"] == pytest.approx(student.perplexity / scores.perplexity, rel=1e-3)
    assert versus["low"] <= versus["ratio"] <= versus["high"]

    assert gap_closed(10, 20, 15) == pytest.approx((math.log(20) - math.log(15)) / (math.log(20) - math.log(10)),
                                                   abs=1e-4)
    assert gap_closed(10, 20, 15) == pytest.approx(0.415, abs=1e-3)
    assert gap_closed(10, 10, 9) is None and gap_closed(10, 8, 9) is None
