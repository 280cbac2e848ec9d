"""The causal-lm corpus: reading sources, per-document splits, byte-level BPE, packed token files."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from compress.core.errors import ConfigError
from compress.tasks.causal_lm import corpus
from compress.tasks.causal_lm import documents as lm_documents

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def stdlib_texts() -> list[tuple[str, str]]:
    """A few dozen small stdlib modules: real, varied source text."""
    files = sorted(f for f in STDLIB.glob("*.py") if 2_000 < f.stat().st_size < 30_000)[:40]
    assert len(files) >= 20
    return [(f.name, f.read_text(encoding="utf-8")) for f in files]


@pytest.fixture(scope="module")
def tokenizer(stdlib_texts):
    return corpus.train_tokenizer((text for _, text in stdlib_texts), vocab_size=600)


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


# ---- reading ---------------------------------------------------------------------------------------------

def test_folder_is_read_recursively_in_sorted_order_with_relative_ids(tmp_path):
    _write(tmp_path / "b.txt", "bee")
    _write(tmp_path / "a" / "z.md", "zed")
    _write(tmp_path / "a" / "y.py", "why")
    _write(tmp_path / "skip.bin", "no")
    _write(tmp_path / ".git" / "x.txt", "hidden")
    assert list(lm_documents.iter_documents(tmp_path)) == [("a/y.py", "why"), ("a/z.md", "zed"), ("b.txt", "bee")]
    assert list(lm_documents.iter_documents(tmp_path, suffixes=(".txt",))) == [("b.txt", "bee")]


def test_a_single_text_file_is_one_document(tmp_path):
    assert list(lm_documents.iter_documents(_write(tmp_path / "one.txt", "hello\n"))) == [("one.txt", "hello\n")]


def test_jsonl_documents_by_line(tmp_path):
    rows = [{"text": "first", "n": 1}, {"text": "second"}]
    file = _write(tmp_path / "c.jsonl", "\n".join(json.dumps(r) for r in rows[:1]) + "\n\n" + json.dumps(rows[1]))
    assert list(lm_documents.iter_documents(file)) == [("c.jsonl:1", "first"), ("c.jsonl:3", "second")]
    assert list(lm_documents.iter_documents(_write(tmp_path / "d.jsonl", '{"body": "x"}\n'), text_column="body")) == [
        ("d.jsonl:1", "x")]


def test_csv_documents_by_row(tmp_path):
    import csv

    limit = csv.field_size_limit()
    file = _write(tmp_path / "c.csv", 'id,text\n1,"multi\nline"\n2,plain\n')
    assert list(lm_documents.iter_documents(file)) == [("c.csv:1", "multi\nline"), ("c.csv:2", "plain")]
    # whole documents may pass csv's field limit while they are read; other readers keep theirs afterwards
    assert csv.field_size_limit() == limit


@pytest.mark.parametrize("as_dict", [False, True])
def test_hf_dataset_saved_to_disk(tmp_path, as_dict):
    import datasets

    dataset = datasets.Dataset.from_dict({"content": ["alpha", "beta", "gamma"], "label": [0, 1, 0]})
    if as_dict:
        dataset = datasets.DatasetDict({"train": dataset, "test": dataset.select([0])})
    dataset.save_to_disk(str(tmp_path / "ds"))
    found = list(lm_documents.iter_documents(tmp_path / "ds", text_column="content"))
    assert found == [("ds:0", "alpha"), ("ds:1", "beta"), ("ds:2", "gamma")]
    with pytest.raises(ConfigError, match="data.text_column"):
        lm_documents.iter_documents(tmp_path / "ds")


def _shard(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    import io
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_webdataset_shards_give_each_samples_text_member_as_a_document(tmp_path, stdlib_texts):
    """Two shards (one gzipped) in a folder, samples of a .txt and a .json member each (webdataset's layout): the
    .txt members are the documents, in shard then member order, named shard:key; a single shard reads alike."""
    texts = [text for _, text in stdlib_texts[:5]]
    first = _shard(tmp_path / "shards" / "corpus-000000.tar",
                   [(f"{i:04d}.txt", texts[i].encode()) for i in range(3)] + [("0000.json", b'{"id": 0}')])
    _shard(tmp_path / "shards" / "corpus-000001.tar.gz",
           [("part/0003.txt", texts[3].encode()), ("part/0003.meta.json", b"{}"), ("0004.text", texts[4].encode())],
           mode="w:gz")
    documents = list(lm_documents.iter_documents(tmp_path / "shards"))
    assert [doc_id for doc_id, _ in documents] == ["corpus-000000.tar:0000", "corpus-000000.tar:0001",
                                                   "corpus-000000.tar:0002", "corpus-000001.tar.gz:part/0003",
                                                   "corpus-000001.tar.gz:0004"]
    assert [text for _, text in documents] == texts
    assert [text for _, text in lm_documents.iter_documents(first)] == texts[:3]
    _shard(tmp_path / "shards" / "corpus-000002.tar", [("0005.txt", b"last")])
    pattern = tmp_path / "shards" / "corpus-{000000,000002}.tar"  # the .tar.gz is not in the pattern
    assert [doc_id for doc_id, _ in lm_documents.iter_documents(pattern)][-1] == "corpus-000002.tar:0005"
    with pytest.raises(ConfigError, match="no such shard"):
        lm_documents.iter_documents(tmp_path / "shards" / "corpus-{000000..000003}.tar", config_file="lm.yaml")
    column = _shard(tmp_path / "c.tar", [("a.body", b"hello"), ("a.txt", b"")])
    assert list(lm_documents.iter_documents(column, text_column="body")) == [("c.tar:a", "hello"), ("c.tar:a", "")]


def test_bad_webdataset_shards_are_refused_naming_the_shard(tmp_path):
    empty = _shard(tmp_path / "empty.tar", [("0000.json", b"{}")])
    with pytest.raises(ConfigError, match="no documents found"):
        list(lm_documents.iter_documents(empty, config_file="lm.yaml"))
    bad = _shard(tmp_path / "bad.tar", [("0000.txt", b"ok"), ("0001.txt", b"caf\xff")])
    with pytest.raises(ConfigError) as error:
        list(lm_documents.iter_documents(bad, config_file="lm.yaml"))
    assert str(error.value).startswith("lm.yaml: data.path: ") and f"{bad}:0001.txt" in str(error.value)
    assert "offset 3" in str(error.value)
    broken = _write(tmp_path / "broken.tar", b"not a tar at all" * 64)
    with pytest.raises(ConfigError, match="broken.tar: not a readable tar shard"):
        list(lm_documents.iter_documents(broken))
    _write(tmp_path / "mixed" / "notes.txt", "a document")
    _shard(tmp_path / "mixed" / "stray.tar", [("0000.txt", b"not read")])
    assert list(lm_documents.iter_documents(tmp_path / "mixed")) == [("notes.txt", "a document")]


def test_missing_path_and_empty_folder_are_refused(tmp_path):
    with pytest.raises(ConfigError) as missing:
        lm_documents.iter_documents(tmp_path / "nope", config_file="lm.yaml")
    assert str(missing.value).startswith("lm.yaml: data.path: ")
    _write(tmp_path / "only.bin", "x")
    with pytest.raises(ConfigError) as empty:
        lm_documents.iter_documents(tmp_path)
    assert "data.path" in str(empty.value) and "no documents" in str(empty.value)
    with pytest.raises(ConfigError, match="no documents"):
        list(lm_documents.iter_documents(_write(tmp_path / "e.jsonl", "\n")))


def test_non_utf8_file_names_file_and_byte_offset(tmp_path):
    _write(tmp_path / "ok.txt", "fine")
    bad = _write(tmp_path / "bad.txt", b"caf\xc3\xa9 ok\n\xffrest")
    with pytest.raises(ConfigError) as error:
        list(lm_documents.iter_documents(tmp_path))
    assert "data.path" in str(error.value) and str(bad) in str(error.value) and "offset 9" in str(error.value)
    for name in ("bad.jsonl", "bad.csv"):
        file = _write(tmp_path / name, b'text\n"ok"\n' if name.endswith("csv") else b'{"text": "ok"}\n')
        with file.open("ab") as stream:
            stream.write(b'{"text": "\xfe"}\n')
        with pytest.raises(ConfigError) as error:
            list(lm_documents.iter_documents(file))
        offset = file.read_bytes().index(b"\xfe")
        assert str(file) in str(error.value) and f"offset {offset}" in str(error.value)


def test_jsonl_and_csv_without_the_column_are_refused(tmp_path):
    file = _write(tmp_path / "c.jsonl", '{"text": "ok"}\n{"body": "no"}\n')
    with pytest.raises(ConfigError) as error:
        list(lm_documents.iter_documents(file))
    assert "data.text_column" in str(error.value) and f"{file}:2" in str(error.value)
    with pytest.raises(ConfigError, match="data.path.*:1: not JSON"):
        list(lm_documents.iter_documents(_write(tmp_path / "n.jsonl", "{oops\n")))
    with pytest.raises(ConfigError, match="data.text_column.*no column 'text'"):
        list(lm_documents.iter_documents(_write(tmp_path / "c.csv", "a,b\n1,2\n")))


# ---- splitting -------------------------------------------------------------------------------------------

def test_split_of_is_deterministic_proportional_and_per_document():
    ids = [f"doc{i}" for i in range(4000)]
    splits = corpus.split_documents(ids, 0.1, 0.2, seed=7)
    assert splits == corpus.split_documents(ids, 0.1, 0.2, seed=7)
    counts = {name: list(splits.values()).count(name) / len(ids) for name in corpus.SPLITS}
    assert counts["val"] == pytest.approx(0.1, abs=0.025) and counts["test"] == pytest.approx(0.2, abs=0.03)
    assert corpus.split_documents(ids[::3] + ["new"], 0.1, 0.2, seed=7) == {**{i: splits[i] for i in ids[::3]},
                                                                            "new": corpus.split_of("new", 0.1, 0.2, 7)}
    assert corpus.split_documents(ids, 0.1, 0.2, seed=8) != splits
    assert set(corpus.split_documents(ids, 0.0, 0.0, seed=7).values()) == {"train"}
    with pytest.raises(ConfigError, match="data.val_fraction"):
        corpus.splitter(0.6, 0.5, seed=0)


# ---- tokenizer -------------------------------------------------------------------------------------------

def test_tokenizer_round_trips_and_is_reproducible(tokenizer, stdlib_texts):
    assert tokenizer.get_vocab_size() == 600 and corpus.end_of_text_id(tokenizer) == 0
    for _, text in stdlib_texts:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    unseen = "naïve café — 東京 🙂\ttabs\r\n"
    assert tokenizer.decode(tokenizer.encode(unseen).ids) == unseen
    again = corpus.train_tokenizer((text for _, text in stdlib_texts), vocab_size=600)
    assert again.to_str() == tokenizer.to_str()


def test_saved_tokenizer_loads_in_transformers_and_encodes_identically(tokenizer, stdlib_texts, tmp_path):
    from transformers import AutoTokenizer

    corpus.save_hf_tokenizer(tokenizer, tmp_path / "tok")
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "tok").iterdir()}
    auto = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert auto.eos_token_id == 0
    loaded = corpus.load_tokenizer(tmp_path / "tok")
    for _, text in stdlib_texts[:10]:
        assert auto.encode(text) == tokenizer.encode(text).ids == loaded.encode(text).ids
    with pytest.raises(ConfigError, match="teacher.model"):
        corpus.load_tokenizer(tmp_path)


def test_vocab_must_fit_the_model():
    corpus.check_vocab_fits(600, 600, "p.yaml", "student.kwargs.vocab_size")
    with pytest.raises(ConfigError, match="p.yaml: student.kwargs.vocab_size: the tokenizer has 601"):
        corpus.check_vocab_fits(601, 600, "p.yaml", "student.kwargs.vocab_size")


# ---- packing ---------------------------------------------------------------------------------------------

def test_pack_corpus_streams_documents_into_split_files(tokenizer, stdlib_texts, tmp_path):
    split = corpus.splitter(0.2, 0.0, seed=1)
    seen = []

    def documents():
        for doc_id, text in stdlib_texts + [("empty", "")]:
            seen.append(doc_id)
            yield doc_id, text

    meta = corpus.pack_corpus(documents(), tokenizer, 64, tmp_path, split)
    assert seen == [doc_id for doc_id, _ in stdlib_texts] + ["empty"]
    assert json.loads((tmp_path / "meta.json").read_text()) == meta
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 600 and set(meta["splits"]) == {"train", "val"}
    for name, stats in meta["splits"].items():
        texts = [text for doc_id, text in stdlib_texts if split(doc_id) == name]
        expected = np.concatenate([tokenizer.encode(text).ids + [0] for text in texts])
        tokens = np.fromfile(tmp_path / f"{name}.tokens", dtype=np.uint16)
        assert stats["tokens"] == len(tokens) == len(expected) and (tokens == expected).all()
        assert stats["documents"] == len(texts) and stats["bytes"] == sum(len(t.encode()) for t in texts)
        starts = np.load(tmp_path / f"{name}.docs.npy")
        assert starts.dtype == np.int64 and len(starts) == len(texts) and starts[0] == 0
        assert (tokens[starts[1:] - 1] == 0).all()
    assert not list(tmp_path.glob("*.tmp"))


def test_token_blocks_are_the_expected_slices(tokenizer, stdlib_texts, tmp_path):
    corpus.pack_corpus(iter(stdlib_texts), tokenizer, 32, tmp_path, lambda doc_id: "train")
    tokens = np.fromfile(tmp_path / "train.tokens", dtype=np.uint16).astype(np.int64)
    starts = np.load(tmp_path / "train.docs.npy")
    blocks = corpus.TokenBlocks(tmp_path, "train")
    assert len(blocks) == (len(tokens) - 1) // 32
    for i in (0, 1, len(blocks) // 2, len(blocks) - 1):
        item = blocks[i]
        assert item.dtype.is_floating_point is False and item.shape == (33,)
        assert item.tolist() == tokens[i * 32:i * 32 + 33].tolist()
        assert starts[blocks.document_of_block(i)] <= i * 32 < np.append(starts, len(tokens))[
            blocks.document_of_block(i) + 1]
    with pytest.raises(IndexError):
        blocks[len(blocks)]
    import pickle

    assert pickle.loads(pickle.dumps(blocks))[3].tolist() == blocks[3].tolist()


def test_too_little_text_for_a_block_is_refused(tokenizer, tmp_path):
    with pytest.raises(ConfigError) as error:
        corpus.pack_corpus(iter([("a", "short text")]), tokenizer, 512, tmp_path, lambda doc_id: "train")
    assert "data.block_size" in str(error.value) and "train split holds" in str(error.value)
    assert not (tmp_path / "meta.json").exists() and not (tmp_path / "train.tokens").exists()
    with pytest.raises(ConfigError, match="data.path: no text"):
        corpus.pack_corpus(iter([("a", "")]), tokenizer, 8, tmp_path, lambda doc_id: "train")
    with pytest.raises(ConfigError, match="data.block_size.*val split holds 0"):
        corpus.pack_corpus(iter([("a", "x " * 100)]), tokenizer, 8, tmp_path, lambda doc_id: "train",
                           required=("train", "val"))


def test_a_rerun_removes_the_old_meta_before_writing(tokenizer, stdlib_texts, tmp_path):
    corpus.pack_corpus(iter(stdlib_texts), tokenizer, 32, tmp_path, lambda doc_id: "train")

    def failing():
        yield stdlib_texts[0]
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        corpus.pack_corpus(failing(), tokenizer, 32, tmp_path, lambda doc_id: "train")
    assert not (tmp_path / "meta.json").exists()
