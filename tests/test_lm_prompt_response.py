"""Prompt/response corpora (supervised fine-tuning data) for causal LMs: rows of a JSONL, CSV or dataset become one
document each whose prompt tokens are packed with a zero target mask, so the data loss, every KD loss and the
perplexity count the response tokens only; the columns and sources that cannot hold pairs are refused in one line."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.core.errors import ConfigError
from compress.tasks.causal_lm import corpus
from compress.tasks.causal_lm import documents as lm_documents
from compress.tasks.causal_lm.lm_fit import DistillOptions, IndexedBlocks, _step_loss, _student_samples, prompt_lengths
from compress.tasks.causal_lm.metrics import score_logits, score_torch_model
from compress.tasks.causal_lm.models import build_lm

STDLIB = Path(sysconfig.get_paths()["stdlib"])
BLOCK = 16


def pairs() -> list[dict]:
    """Real text: each module's docstring-ish start as the prompt, the code after it as the response."""
    files = sorted(f for f in STDLIB.glob("*.py") if 2_000 < f.stat().st_size < 8_000)[:10]
    texts = [f.read_text(encoding="utf-8") for f in files]
    return [{"prompt": t[:300], "response": t[300:900], "id": i} for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    file = folder / "pairs.jsonl"
    file.write_text("\n".join(json.dumps(row) for row in pairs()))
    documents = list(lm_documents.iter_documents(file, prompt_column="prompt"))
    tokenizer = corpus.train_tokenizer((text for _, text in documents), vocab_size=300)
    meta = corpus.pack_corpus(iter(documents), tokenizer, BLOCK, folder / "packed",
                              split_of=lambda doc_id: "val" if doc_id.endswith((":3", ":7")) else "train", masked=True)
    return {"documents": documents, "tokenizer": tokenizer, "meta": meta, "folder": folder / "packed", "file": file}


def test_each_row_is_one_document_of_its_prompt_then_its_response(packed):
    rows = pairs()
    documents = packed["documents"]
    assert [doc_id for doc_id, _ in documents] == [f"pairs.jsonl:{i + 1}" for i in range(len(rows))]
    first = documents[0][1]
    assert isinstance(first, lm_documents.PromptedText) and first == rows[0]["prompt"] + rows[0]["response"]
    assert (first.prompt, first.response) == (rows[0]["prompt"], rows[0]["response"])


def test_the_mask_marks_the_response_tokens_and_the_end_of_text(packed):
    """Tokens and mask side by side: the first document's prompt (tokenized alone) is 0s, its response and the
    end-of-text 1s; the blocks' target masks are the mask shifted by one, like the labels."""
    tokenizer, folder = packed["tokenizer"], packed["folder"]
    first = packed["documents"][0][1]
    prompt = tokenizer.encode(first.prompt, add_special_tokens=False).ids
    response = tokenizer.encode(first.response, add_special_tokens=False).ids
    tokens = np.fromfile(folder / "train.tokens", dtype=np.uint16)
    mask = np.fromfile(folder / "train.mask", dtype=np.uint8)
    assert len(mask) == len(tokens)
    length = len(prompt) + len(response) + 1
    assert tokens[:length].tolist() == prompt + response + [corpus.end_of_text_id(tokenizer)]
    assert mask[:length].tolist() == [0] * len(prompt) + [1] * (len(response) + 1)
    train = packed["meta"]["splits"]["train"]
    assert train["target_tokens"] == int(mask.sum()) < train["tokens"]
    blocks = corpus.TokenBlocks(folder, "train")
    assert blocks.masked
    for index in (0, 3, len(blocks) - 1):
        start = index * BLOCK
        assert blocks.target_mask(index).tolist() == mask[start + 1:start + BLOCK + 1].astype(bool).tolist()


def test_losses_and_perplexity_count_the_responses_only(packed):
    blocks = corpus.TokenBlocks(packed["folder"], "train")
    torch.manual_seed(0)
    vocab = packed["tokenizer"].get_vocab_size(with_added_tokens=True)
    model = build_lm("hf-config:llama", {"layers": 1, "hidden": 32, "heads": 2}, vocab, 64).eval()
    teacher = build_lm("hf-config:llama", {"layers": 1, "hidden": 32, "heads": 2}, vocab, 64).eval()
    mixed = [i for i in range(len(blocks)) if 0 < int(blocks.target_mask(i).sum()) < BLOCK]
    chosen = [0] + mixed[:3]  # a block of prompt alone, and blocks where a prompt meets its response
    items = [IndexedBlocks(blocks)[i] for i in chosen]
    batch = torch.stack([block for _, block, _ in items])
    mask = torch.stack([m for _, _, m in items])
    assert 0 < int(mask.sum()) < mask.numel()
    with torch.no_grad():
        logits = model(input_ids=batch[:, :-1]).logits
        nll = -torch.log_softmax(logits, -1).gather(-1, batch[:, 1:, None])[..., 0]
        expected = float(nll[mask].mean())
        assert float(_step_loss(model, model, batch, mask, [0, 1, 2, 3], None, None, None, None)) == pytest.approx(
            expected, rel=1e-5)
        # KD alone (alpha 1): the forward KL over the target positions, whatever the prompt positions hold
        distill = DistillOptions(loss="forward_kl", alpha=1.0)
        kd = float(_step_loss(model, model, batch, mask, [0, 1, 2, 3], teacher, distill, None, None))
        t_logits = teacher(input_ids=batch[:, :-1]).logits
        per_token = (torch.softmax(t_logits, -1) * (torch.log_softmax(t_logits, -1)
                                                    - torch.log_softmax(logits, -1))).sum(-1)
        assert kd == pytest.approx(float(per_token[mask].mean()), rel=1e-4)
    scores = score_torch_model(model, blocks)
    scores_of = {name: getattr(scores, name)[chosen] for name in ("tokens", "nll", "predictions")}
    assert scores_of["tokens"].tolist() == mask.sum(-1).tolist() and scores_of["tokens"][0] == 0
    assert scores_of["nll"].sum() == pytest.approx(float(nll[mask].sum()), rel=1e-5)
    assert (scores_of["predictions"][~mask.numpy()] == -1).all()
    engine = score_logits(logits.numpy(), batch[:, 1:].numpy(), mask.numpy())  # what an engine's logits give
    assert engine[0].sum() == pytest.approx(scores_of["nll"].sum(), rel=1e-4)
    assert engine[1].tolist() == scores_of["tokens"].tolist()


def test_on_policy_samples_continue_each_prompt_and_only_the_samples_are_distilled(packed):
    """GKD's on-policy batches on prompt/response data: the student is given each block's tokens up to its first
    response and samples the rest; plain text (every position a target) is continued from its first half."""
    blocks = corpus.TokenBlocks(packed["folder"], "train")
    # blocks that start in a prompt and reach its response a few tokens before their end
    chosen = [i for i in range(len(blocks)) if not blocks.target_mask(i)[0]
              and blocks.target_mask(i)[1:BLOCK - 3].any()][:3]
    assert len(chosen) == 3
    items = [IndexedBlocks(blocks)[i] for i in chosen]
    inputs = torch.stack([block for _, block, _ in items])[:, :-1]
    mask = torch.stack([m for _, _, m in items])
    firsts = [int(torch.nonzero(row).flatten()[0]) for row in mask]  # label i is token i + 1: a response's first
    assert prompt_lengths(mask) == [first + 1 for first in firsts]
    assert prompt_lengths(torch.ones_like(mask)) == [BLOCK // 2] * len(chosen)  # plain text: the first half
    assert prompt_lengths(torch.zeros_like(mask)) == [BLOCK // 2] * len(chosen)  # no response in the block

    vocab = packed["tokenizer"].get_vocab_size(with_added_tokens=True)
    torch.manual_seed(0)
    model = build_lm("hf-config:llama", {"layers": 1, "hidden": 32, "heads": 2}, vocab, 64)
    sampled, sampled_mask = _student_samples(model, inputs, mask)
    assert sampled.shape == inputs.shape and model.training  # put back in training mode
    for row, length in enumerate(prompt_lengths(mask)):
        assert torch.equal(sampled[row, :length], inputs[row, :length])  # the prompt as it was
        assert sampled_mask[row].tolist() == [False] * (length - 1) + [True] * (BLOCK - length) + [False]
    assert not torch.equal(sampled, inputs)  # the rest is the student's (a random student: not the data)


def test_csv_and_hf_datasets_give_pairs_too(tmp_path):
    import datasets

    file = tmp_path / "p.csv"
    file.write_text("question,answer\nWhat is 2+2?, 4\nName a colour., red\n")
    found = list(lm_documents.iter_documents(file, prompt_column="question", response_column="answer"))
    assert [(d.prompt, d.response) for _, d in found] == [("What is 2+2?", " 4"), ("Name a colour.", " red")]
    datasets.Dataset.from_dict({"q": ["a", "b"], "r": ["1", None]}).save_to_disk(str(tmp_path / "ds"))
    found = list(lm_documents.iter_documents(tmp_path / "ds", prompt_column="q", response_column="r"))
    assert [(d.prompt, d.response) for _, d in found] == [("a", "1"), ("b", "")]


def test_missing_columns_and_sources_without_rows_are_refused_naming_the_field(tmp_path):
    file = tmp_path / "p.jsonl"
    file.write_text(json.dumps({"prompt": "x", "answer": "y"}) + "\n")
    with pytest.raises(ConfigError) as error:
        list(lm_documents.iter_documents(file, prompt_column="prompt", config_file="lm.yaml"))
    assert str(error.value).startswith("lm.yaml: data.corpus.response_column: ") and f"{file}:1" in str(error.value)
    csv_file = tmp_path / "p.csv"
    csv_file.write_text("prompt,answer\nx,y\n")
    with pytest.raises(ConfigError, match="data.corpus.response_column: .*no column 'response'"):
        list(lm_documents.iter_documents(csv_file, prompt_column="prompt"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("plain")
    with pytest.raises(ConfigError, match="data.corpus.prompt_column: .*rows of a JSONL, a CSV"):
        lm_documents.iter_documents(tmp_path / "docs", prompt_column="prompt")


def test_a_pipeline_refuses_pairs_from_the_standard_library_at_validate(tmp_path, capsys):
    import yaml

    from compress.cli import main
    from test_lm_pipeline import lm_config

    config = lm_config(**{"data.corpus.prompt_column": "prompt"})
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    assert main(["validate", str(tmp_path / "pipeline.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.corpus.prompt_column" in err


def test_a_prompt_response_pipeline_trains_and_scores_on_responses(tmp_path, capsys):
    """teacher, the student alone and KD on pairs: every stage's token counts are the responses'."""
    import yaml

    from compress.cli import main
    from test_lm_pipeline import lm_config

    file = tmp_path / "pairs.jsonl"
    rows = pairs() * 3
    file.write_text("\n".join(json.dumps({**row, "id": i}) for i, row in enumerate(rows)))
    config = lm_config(**{"data.source": "corpus", "data.path": str(file),
                          "data.corpus": {"block_size": 32, "vocab_size": 320, "prompt_column": "prompt"}})
    for stage in ("export", "build", "benchmark"):
        config["stages"].pop(stage)
    config.pop("gates")
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "pipeline.yaml"), "--run-dir", str(tmp_path / "run")]) == 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    teacher = record["teacher"]["outputs"]
    assert teacher["corpus"]["masked"]
    split = teacher["split"]
    assert teacher["summary"]["tokens"] <= teacher["corpus"]["splits"][split]["target_tokens"]
    assert record["distill"]["outputs"]["summary"]["tokens"] == teacher["summary"]["tokens"]
    assert "responses: the loss counts those" in capsys.readouterr().out
