"""Text data for BERT-style classifiers: a WordPiece tokenizer, labelled text sets, a text Split, the device's encoding.

The host tokenises with compress.tasks.text_classification.tokenizer and the device with deploy/runner/preprocess_text.py
from the bundle's tokenizer.json and recorded spec: both must give the same int64 arrays for the
same texts, odd ones included, also under the device's Python 3.8 and its own `tokenizers` release.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.core.errors import UsageError
from compress.data.splits import NO_LABEL
from compress.tasks.text_classification.text import TextRecords, read_text_split, read_texts
from compress.tasks.text_classification.text_split import TextSplit, join_texts
from compress.tasks.text_classification.tokenizer import (SPECIAL_TOKENS, encode, is_lowercasing, load_tokenizer, pad_id, save_tokenizer,
                                     tokenizer_spec, train_wordpiece)
from deploy.runner import RUNNER_DIR, RUNNER_FILES
from deploy.runner.preprocess_text import encode_texts, read_text_lines
from deploy.runner.runner import RunnerError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "text"))
import make_texts  # noqa: E402  (examples/text/make_texts.py)

DEVICE_PYTHON = os.environ.get("COMPRESS_TEST_DEVICE_PYTHON")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ODD_TEXTS = ["", " ", "\t \n ", "Café crème brûlée, naïve façade", "ÀÉÎÕÜ ß ø å Ǆ", "emoji 🙂🚀 👍🏽 👨‍👩‍👧 ok",
             "東京 北京 서울 日本語のテキスト", "مرحبا بالعالم", "zero\u200bwidth\u00a0nbsp\u3000ideographic",
             "control\x00chars\x07here\x1b", "e\u0301 combining a\u0308", "!!!???...---", "a" * 300 + " tail",
             "word " * 5000, "UPPER lower MiXeD", "tab\tseparated\tvalues", "crlf\r\ninside", "ﬁ ligature ① ²",
             "the striker scored twice", "unseenword anotherunseenword zzzqqq"]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("texts")
    assert make_texts.main([str(folder), "--train", "1200", "--val", "300"]) == 0
    return folder


@pytest.fixture(scope="module")
def example_texts(example) -> list[str]:
    return read_texts(example / "train.csv").texts


@pytest.fixture(scope="module")
def tokenizer(example_texts):
    return train_wordpiece(example_texts, vocab_size=1500)


def write_csv(path: Path, rows: list[list[str]], header=("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows([list(header), *rows])
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def usage_error(call, *args, **kwargs) -> str:
    with pytest.raises(UsageError) as info:
        call(*args, **kwargs)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    return str(info.value)


# ---------------------------------------------------------------- tokenizer


def test_training_twice_on_the_same_texts_gives_the_same_tokenizer_file(example_texts):
    first, second, third = (train_wordpiece(example_texts, vocab_size=1500).to_str() for _ in range(3))
    assert first == second == third


def test_the_tokenizer_is_bert_style(tokenizer):
    assert [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tokenizer.get_vocab_size() <= 1500 and pad_id(tokenizer) == 0 and is_lowercasing(tokenizer)
    single = tokenizer.encode("The Striker scored")
    assert single.tokens[0] == "[CLS]" and single.tokens[-1] == "[SEP]" and set(single.type_ids) == {0}
    pair = tokenizer.encode("the striker", "scored twice")
    assert pair.tokens.count("[SEP]") == 2 and pair.type_ids[-1] == 1 and pair.type_ids[1] == 0
    uncased = train_wordpiece(["Upper Case Words here"] * 3, vocab_size=100, lowercase=False)
    assert not is_lowercasing(uncased) and "Upper" in uncased.encode("Upper").tokens
    for text in ["The striker scored twice!", "Café crème naïve", "investors sold bonds on sunday"]:  # round trip
        decoded = tokenizer.decode(tokenizer.encode(text).ids)
        assert decoded.replace(" ", "") == tokenizer.normalizer.normalize_str(text).replace(" ", "")
    assert tokenizer.decode(tokenizer.encode("the team won the league").ids) == "the team won the league"


def test_encode_cuts_to_max_length_and_pads_to_the_longest_or_to_pad_to(tokenizer):
    texts = ["the striker scored twice", "word " * 200, "goal"]
    dynamic = encode(tokenizer, texts, max_length=16)
    assert set(dynamic) == set(INPUTS) and all(a.dtype == np.int64 and a.shape == (3, 16) for a in dynamic.values())
    lengths = dynamic["attention_mask"].sum(1)
    assert lengths[1] == 16 and dynamic["input_ids"][1, -1] == 3  # cut, [SEP] kept last
    assert (dynamic["input_ids"][2, lengths[2]:] == 0).all() and dynamic["input_ids"][2, lengths[2] - 1] == 3
    short = encode(tokenizer, ["goal", "the team"], max_length=16)
    assert short["input_ids"].shape[1] == short["attention_mask"].sum(1).max() < 16  # no longer than the longest
    fixed = encode(tokenizer, ["goal", "the team"], max_length=16, pad_to=32)
    assert fixed["input_ids"].shape == (2, 32) and (fixed["input_ids"][:, :short["input_ids"].shape[1]]
                                                     == short["input_ids"]).all()
    assert (fixed["attention_mask"].sum(1) == short["attention_mask"].sum(1)).all()
    assert encode(tokenizer, [], max_length=16)["input_ids"].shape == (0, 0)
    with pytest.raises(ValueError, match="pad_to 8 is shorter than max_length 16"):
        encode(tokenizer, texts, max_length=16, pad_to=8)
    with pytest.raises(ValueError, match="no room"):
        encode(tokenizer, texts, max_length=2)
    assert tokenizer.truncation is None and tokenizer.padding is None  # the caller's tokenizer is left as it was


def test_a_tokenizer_loads_from_its_file_or_a_model_folder(tokenizer, tmp_path):
    file = save_tokenizer(tokenizer, tmp_path / "tokenizer.json")
    model_folder = tmp_path / "bert-tiny"
    model_folder.mkdir()
    save_tokenizer(tokenizer, model_folder)
    (model_folder / "config.json").write_text("{}")
    for path in (file, model_folder, str(model_folder)):
        assert load_tokenizer(path).to_str() == tokenizer.to_str()


def test_a_missing_or_broken_tokenizer_file_is_one_line_naming_it(tmp_path):
    message = usage_error(load_tokenizer, tmp_path / "nope.json", field="data.tokenizer")
    assert message == f"{tmp_path / 'nope.json'}: data.tokenizer: no such file"
    (tmp_path / "empty-model").mkdir()
    in_folder = tmp_path / "empty-model" / "tokenizer.json"
    assert usage_error(load_tokenizer, tmp_path / "empty-model") == f"{in_folder}: tokenizer: no such file"
    (tmp_path / "bad.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    assert usage_error(load_tokenizer, tmp_path / "bad.json").startswith(
        f"{tmp_path / 'bad.json'}: tokenizer: not a tokenizers")
    (tmp_path / "binary.json").write_bytes(b"\x00\xff garbage")
    assert f"{tmp_path / 'binary.json'}: tokenizer: " in usage_error(load_tokenizer, tmp_path / "binary.json")


def test_the_spec_records_the_text_steps_as_data():
    assert tokenizer_spec("tokenizer.json", 128, True) == {"text": {
        "tokenizer": "tokenizer.json", "max_length": 128, "pad_id": 0, "pad_to": None, "lowercase": True,
        "truncation": "right", "inputs": ["input_ids", "attention_mask", "token_type_ids"]}}
    assert tokenizer_spec(max_length=64, pad_to=64, inputs=["input_ids", "attention_mask"])["text"]["inputs"] == [
        "input_ids", "attention_mask"]
    with pytest.raises(ValueError, match="unknown model inputs"):
        tokenizer_spec(inputs=["pixel_values"])
    with pytest.raises(ValueError, match="not a path"):
        tokenizer_spec("../tokenizer.json")


# ---------------------------------------------------------------- reading labelled texts


def test_class_names_are_numbered_in_sorted_order_integers_kept_and_columns_renamed(tmp_path):
    rows = [["goal!", "sports"], ["vote", "politics"], ["run", "sports"]]
    train = read_texts(write_csv(tmp_path / "train.csv", rows))
    assert isinstance(train, TextRecords) and train.texts == ["goal!", "vote", "run"]
    assert train.classes == ["politics", "sports"] and train.labels.tolist() == [1, 0, 1]
    assert train.labels.dtype == np.int64 and len(train) == 3 and train.where == str(tmp_path / "train.csv")
    val = read_texts(write_csv(tmp_path / "val.csv", [["a senate vote", "politics"]]), classes=train.classes)
    assert val.labels.tolist() == [0] and val.classes == train.classes and train.subset([2, 0]).texts[0] == "run"
    ints = read_texts(write_csv(tmp_path / "ints.csv", [["a", "2"], ["b", "0"]]))
    assert ints.labels.tolist() == [2, 0] and ints.classes == ["0", "1", "2"]
    rows = [{"sentence": "the team won", "topic": "sports", "id": 1}, {"sentence": "ballots", "topic": "politics"}]
    renamed = read_texts(write_jsonl(tmp_path / "t.jsonl", rows), columns={"text": "sentence", "label": "topic"})
    assert renamed.texts == ["the team won", "ballots"] and renamed.labels.tolist() == [1, 0]
    numbered = read_texts(write_jsonl(tmp_path / "n.jsonl", [{"text": "x", "label": 1}, {"text": "y", "label": 0}]))
    assert numbered.labels.tolist() == [1, 0]


def test_local_hugging_face_datasets_folder_dict_parquet_and_class_labels(tmp_path):
    import datasets

    data = {"text": ["the striker scored", "a vote", "the chef cooked"], "label": ["sports", "politics", "food"]}
    datasets.Dataset.from_dict(data).save_to_disk(str(tmp_path / "plain"))
    plain = read_texts(tmp_path / "plain")
    assert plain.texts == data["text"] and plain.classes == ["food", "politics", "sports"]
    assert plain.labels.tolist() == [2, 1, 0]

    datasets.Dataset.from_dict(data).to_parquet(str(tmp_path / "train.parquet"))
    parquet = read_texts(tmp_path / "train.parquet")
    assert parquet.texts == data["text"] and parquet.labels.tolist() == [2, 1, 0]

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["bad", "good", "great"], "label": [0, 1, 1]}, features=features),
        "validation": datasets.Dataset.from_dict({"text": ["awful"], "label": [0]}, features=features)})
    splits.save_to_disk(str(tmp_path / "dict"))
    train = read_texts(tmp_path / "dict")
    assert train.classes == ["neg", "pos"] and train.labels.tolist() == [0, 1, 1]
    assert train.where == str(tmp_path / "dict" / "train")
    val = read_text_split(tmp_path / "dict", "validation", classes=train.classes)
    assert val.texts == ["awful"] and val.labels.tolist() == [0]
    assert read_text_split(tmp_path / "dict", "test") is None and read_text_split(tmp_path / "plain", "test") is None


def test_bad_text_files_are_one_line_naming_file_and_field(tmp_path):
    no_column = write_csv(tmp_path / "cols.csv", [["x", "a"]], header=("body", "label"))
    assert usage_error(read_texts, no_column).startswith(f"{no_column}:1: text: no such column in the header")
    no_key = write_jsonl(tmp_path / "keys.jsonl", [{"text": "x", "label": "a"}, {"text": "y"}])
    assert usage_error(read_texts, no_key).startswith(f"{no_key}:2: label: missing")
    empty_text = write_csv(tmp_path / "blank.csv", [["fine", "a"], ["also fine", "b"], ["  ", "a"]])
    assert usage_error(read_texts, empty_text) == f"{empty_text}:4: text: empty text"
    null_text = write_jsonl(tmp_path / "null.jsonl", [{"text": "x", "label": "a"}, {"text": None, "label": "a"}])
    assert usage_error(read_texts, null_text) == f"{null_text}:2: text: empty text"
    number_text = write_jsonl(tmp_path / "number.jsonl", [{"text": 42, "label": "a"}])
    assert usage_error(read_texts, number_text).startswith(f"{number_text}:1: text: 42 is not a text")
    train = read_texts(write_csv(tmp_path / "train.csv", [["x", "cats"], ["y", "dogs"]]))
    val = write_csv(tmp_path / "val.csv", [["z", "dogs"], ["w", "birds"]])
    assert usage_error(read_texts, val, classes=train.classes).startswith(
        f"{val}:3: label: class 'birds' is not among the train classes (cats, dogs)")
    for name, content in (("empty.csv", ""), ("bom.csv", "\ufeff\n  \n"), ("empty.jsonl", "\n\n")):
        (tmp_path / name).write_text(content, encoding="utf-8")
        assert usage_error(read_texts, tmp_path / name, field="data.val_path") == \
            f"{tmp_path / name}: data.val_path: the file is empty"
    header_only = write_csv(tmp_path / "header.csv", [])
    assert usage_error(read_texts, header_only) == f"{header_only}: data.path: no rows under the header"
    given = ["cats", "dogs", "fish"]
    missing_class = write_csv(tmp_path / "some.csv", [["x", "cats"], ["y", "dogs"]])
    assert usage_error(read_texts, missing_class, classes=given, every_class=True) == \
        f"{missing_class}: label: no example of class 'fish' (of 3 classes given)"
    assert read_texts(missing_class, classes=given).labels.tolist() == [0, 1]  # a val split may lack a class
    assert usage_error(read_texts, tmp_path / "absent.csv") == f"{tmp_path / 'absent.csv'}: data.path: no such file"
    assert usage_error(read_texts, tmp_path / "absent") == f"{tmp_path / 'absent'}: data.path: no such file or folder"
    (tmp_path / "notes.txt").write_text("hello\n")
    assert usage_error(read_texts, tmp_path / "notes.txt").startswith(f"{tmp_path / 'notes.txt'}: data.path: a text")
    assert usage_error(read_texts, no_column, columns={"sentence": "body"}).startswith("data.columns.sentence: ")
    one_class = write_csv(tmp_path / "one.csv", [["x", "cats"], ["y", "cats"]])
    assert usage_error(read_texts, one_class) == \
        f"{one_class}: label: only class 'cats'; a classifier needs at least two classes"
    assert read_texts(one_class, classes=["cats", "dogs"]).labels.tolist() == [0, 0]  # a val split may hold one
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "fine", "label": "a"}\n{"text": "café", "label": "b"}\n'
                                            .encode("latin-1"))
    assert usage_error(read_texts, tmp_path / "latin1.jsonl") == \
        f"{tmp_path / 'latin1.jsonl'}:2: not UTF-8 text (byte 0xe9); save the file as UTF-8"


def test_bad_hugging_face_text_datasets_name_folder_row_and_column(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"body": ["x"], "label": [0]}).save_to_disk(str(tmp_path / "cols"))
    assert usage_error(read_texts, tmp_path / "cols").startswith(f"{tmp_path / 'cols'}: text: no such column")
    datasets.Dataset.from_dict({"text": ["fine", ""], "label": [0, 1]}).save_to_disk(str(tmp_path / "blank"))
    assert usage_error(read_texts, tmp_path / "blank") == f"{tmp_path / 'blank'}: row 1: text: empty text"
    datasets.Dataset.from_dict({"text": [1, 2], "label": [0, 1]}).save_to_disk(str(tmp_path / "ints"))
    assert usage_error(read_texts, tmp_path / "ints").startswith(f"{tmp_path / 'ints'}: text: a int64 column")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
    empty = datasets.Dataset.from_dict({"text": [], "label": []}, features=features)
    empty.save_to_disk(str(tmp_path / "none"))
    assert usage_error(read_texts, tmp_path / "none").startswith(
        f"{tmp_path / 'none'}: data.path: the dataset has no rows")
    empty.to_parquet(str(tmp_path / "none.parquet"))
    assert usage_error(read_texts, tmp_path / "none.parquet").startswith(f"{tmp_path / 'none.parquet'}: data.path: ")
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": ["x"], "label": [0]})}).save_to_disk(
        str(tmp_path / "dict"))
    assert "the DatasetDict has no 'train' split (it has validation)" in usage_error(read_texts, tmp_path / "dict")
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["x", "x"]}).save_to_disk(str(tmp_path / "one"))
    assert usage_error(read_texts, tmp_path / "one") == f"{tmp_path / 'one'}: label: only class 'x'; a classifier " \
                                                         "needs at least two classes"
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["x", "y"]}).save_to_disk(str(tmp_path / "val"))
    assert usage_error(read_texts, tmp_path / "val", classes=["x"]).startswith(
        f"{tmp_path / 'val'}: row 1: label: class 'y' is not among the train classes")


# ---------------------------------------------------------------- the text split


def test_batches_are_in_order_each_padded_to_its_longest_row(tokenizer, example):
    records = read_texts(example / "val.csv")
    split = TextSplit.from_records(records, tokenizer, max_length=24)
    assert len(split) == len(records) and split.sample_shape == (24,) and split.max_length == 24 and not split.augments
    whole = encode(tokenizer, records.texts, max_length=24)
    seen = 0
    for inputs, labels in split.batches(64):
        rows = slice(seen, seen + len(labels))
        width = inputs["input_ids"].shape[1]
        assert width == inputs["attention_mask"].sum(1).max() <= 24
        for name in INPUTS:
            assert inputs[name].dtype == np.int64 and (inputs[name] == whole[name][rows, :width]).all()
        assert (labels == records.labels[rows]).all()
        seen += len(labels)
    assert seen == len(records)
    assert len({inputs["input_ids"].shape[1] for inputs, _ in split.batches(4)}) > 1  # short batches are short


def test_inputs_and_sample_pad_to_the_longest_of_those_rows_or_a_fixed_length(tokenizer):
    texts = ["goal", "the striker scored twice in the final", "vote"]
    split = TextSplit(texts, np.array([0, 1, 2]), tokenizer, max_length=32)
    picked = split.inputs([2, 0])
    assert (picked["input_ids"] == encode(tokenizer, ["vote", "goal"], 32)["input_ids"]).all()
    assert split.inputs([1, 0], pad_to=32)["input_ids"].shape == (2, 32)
    with pytest.raises(ValueError, match="shorter than max_length"):
        split.inputs([0], pad_to=16)
    x, y = split.sample([1, 2, 0], 2)
    assert (x["input_ids"] == encode(tokenizer, texts[1:], 32)["input_ids"]).all() and y.tolist() == [1, 2]
    assert split.texts_at([2, 1]) == ["vote", texts[1]]


def test_the_train_loader_follows_the_sampler_with_tensors_on_the_device(tokenizer, example_texts):
    texts = example_texts[:50]
    split = TextSplit(texts, np.arange(50) % 8, tokenizer, max_length=20)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(3)).tolist()
    seen = []
    for inputs, labels, indices in split.train_loader(order, 16, seed=0, epoch=1, device=torch.device("cpu")):
        assert set(inputs) == set(INPUTS) and all(t.dtype == torch.int64 for t in inputs.values())
        assert indices.device.type == "cpu" and labels.tolist() == (indices % 8).tolist()
        expected = encode(tokenizer, [texts[i] for i in indices.tolist()], 20)
        for name in INPUTS:
            assert torch.equal(inputs[name], torch.from_numpy(expected[name]))
        seen += indices.tolist()
    assert seen == order
    again = [i.tolist() for _, _, i in split.train_loader(order, 16, seed=5, epoch=2, device=torch.device("cpu"))]
    assert sum(again, []) == order
    split.close()


def test_subset_unlabelled_and_joining_transfer_texts_keep_the_tokens(tokenizer):
    texts = ["goal", "the team won", "a vote today", "the chef cooked"]
    split = TextSplit(texts, np.array([0, 1, 2, 3]), tokenizer, max_length=16)
    part = split.subset([3, 1])
    assert part.labels.tolist() == [3, 1] and part.texts == ["the chef cooked", "the team won"]
    assert (part.inputs([0, 1])["input_ids"] == split.inputs([3, 1])["input_ids"]).all()
    free = split.unlabelled()
    assert (free.labels == NO_LABEL).all() and (free.inputs([0, 1, 2, 3])["input_ids"] ==
                                                split.inputs([0, 1, 2, 3])["input_ids"]).all()
    joined = join_texts(split.subset([0, 1]), split.subset([2, 3]).unlabelled())
    assert joined.labels.tolist() == [0, 1, NO_LABEL, NO_LABEL] and joined.texts == texts
    assert (joined.inputs(range(4))["input_ids"] == split.inputs(range(4))["input_ids"]).all()
    assert join_texts(split, None) is split
    with pytest.raises(ValueError, match="tokenised as the training texts"):
        join_texts(split, TextSplit(texts, np.zeros(4), tokenizer, max_length=8))


# ---------------------------------------------------------------- the device's encoding


def make_release(folder: Path, tokenizer, spec: dict) -> tuple[Path, dict]:
    """A release folder as the device holds it: the runner's files, tokenizer.json, manifest.json."""
    folder.mkdir(parents=True)
    for name in (*RUNNER_FILES, "preprocess_text.py"):
        shutil.copy(RUNNER_DIR / name, folder / name)
    save_tokenizer(tokenizer, folder / spec["text"]["tokenizer"])
    manifest = {"preprocessing": {"layout": "NC", "dtype": "int64", **spec}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder, manifest


DEVICE_SCRIPT = """
import json, sys
import numpy as np
from pathlib import Path
release, texts_file, lines_file, out = sys.argv[1:5]
sys.path.insert(0, release)
import runner
module = runner.release_module(Path(release), "preprocess_text")
manifest = json.loads(Path(release, "manifest.json").read_text())
texts = json.loads(Path(texts_file).read_text(encoding="utf-8"))
arrays = module.encode_texts(release, manifest, texts)
np.savez(out, **arrays)
print(json.dumps({"lines": module.read_text_lines(lines_file), "version": __import__("tokenizers").__version__}))
"""


def pythons() -> list:
    """The host's interpreter, and the device's Python 3.8 where it is named and has tokenizers."""
    reason = "COMPRESS_TEST_DEVICE_PYTHON not set (.ci/run sets it)"
    if DEVICE_PYTHON:
        found = subprocess.run([DEVICE_PYTHON, "-c", "import tokenizers, numpy"], capture_output=True).returncode == 0
        reason = "" if found else f"tokenizers is not installed in {DEVICE_PYTHON}"
    device = pytest.param(DEVICE_PYTHON, id="device-python-3.8", marks=pytest.mark.skipif(bool(reason), reason=reason))
    return [pytest.param(sys.executable, id="host-python"), device]


def test_host_and_device_encodings_are_equal_in_process(tokenizer, example_texts, tmp_path):
    corpus = example_texts[:400] + ODD_TEXTS
    for spec in (tokenizer_spec(max_length=64), tokenizer_spec(max_length=32, pad_to=48)):
        release, manifest = make_release(tmp_path / f"release-{spec['text']['max_length']}", tokenizer, spec)
        device = encode_texts(release, manifest, corpus)
        host = encode(tokenizer, corpus, spec["text"]["max_length"], spec["text"]["pad_to"])
        assert set(device) == set(INPUTS)
        for name in INPUTS:
            assert device[name].dtype == np.int64 and np.array_equal(device[name], host[name]), name
    release, manifest = make_release(tmp_path / "two-inputs", tokenizer,
                                     tokenizer_spec(max_length=16, inputs=["input_ids", "attention_mask"]))
    assert set(encode_texts(release, manifest, ["goal"])) == {"input_ids", "attention_mask"}


@pytest.mark.parametrize("python", pythons())
def test_the_device_encodes_texts_as_the_host_does(python, tokenizer, example_texts, tmp_path):
    corpus = example_texts[:400] + ODD_TEXTS
    release, _ = make_release(tmp_path / "release", tokenizer, tokenizer_spec(max_length=64))
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(corpus, ensure_ascii=False), encoding="utf-8")
    lines = tmp_path / "lines.txt"
    lines.write_bytes("\ufeffCafé crème\r\n\n   \nemoji 🙂 ok\n東京\tline".encode("utf-8"))
    out = tmp_path / "device.npz"
    done = subprocess.run([python, "-B", "-c", DEVICE_SCRIPT, str(release), str(texts_file), str(lines), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["lines"] == ["Café crème", "emoji 🙂 ok", "東京\tline"]
    host = encode(tokenizer, corpus, 64)
    with np.load(out) as device:
        for name in INPUTS:
            assert np.array_equal(device[name], host[name]), f"{name} differs under tokenizers {result['version']}"
    assert not list(release.rglob("__pycache__"))


def test_no_device_module_shadows_the_standard_library():
    """runner.py puts the release folder first on sys.path: a tokenize.py there would be what inspect imports."""
    shadowing = sorted(p.stem for p in RUNNER_DIR.glob("*.py") if p.stem in sys.stdlib_module_names)
    assert not shadowing, shadowing


def test_device_text_inputs_refuse_bad_files_and_bundles_in_one_line(tokenizer, tmp_path):
    with pytest.raises(RunnerError, match=r"missing\.txt: not found"):
        read_text_lines(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(RunnerError, match=r"latin1\.txt:2: not UTF-8 text"):
        read_text_lines(tmp_path / "latin1.txt")
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(RunnerError, match=r"blank\.txt: no text in it"):
        read_text_lines(tmp_path / "blank.txt")
    release, manifest = make_release(tmp_path / "release", tokenizer, tokenizer_spec(max_length=16))
    with pytest.raises(RunnerError, match="does not take text"):
        encode_texts(release, {"preprocessing": {"mean": [0.0], "std": [1.0]}}, ["x"])
    (release / "tokenizer.json").unlink()
    with pytest.raises(RunnerError, match=r"tokenizer\.json: not found"):
        encode_texts(release, manifest, ["x"])
    sneaky = {"preprocessing": {"text": {**manifest["preprocessing"]["text"], "tokenizer": "../tokenizer.json"}}}
    with pytest.raises(RunnerError, match="not a file name inside the release"):
        encode_texts(release, sneaky, ["x"])


# ---------------------------------------------------------------- the example data set


def test_the_example_set_is_the_same_bytes_for_a_seed_with_eight_even_topics_of_5_to_40_words(tmp_path, example):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "text" / "make_texts.py"), str(tmp_path / "a"),
                           "--train", "1200", "--val", "300"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("train.csv", "val.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (example / name).read_bytes()
    assert make_texts.main([str(tmp_path / "b"), "--train", "1200", "--val", "300", "--seed", "1"]) == 0
    assert (tmp_path / "b" / "train.csv").read_bytes() != (example / "train.csv").read_bytes()
    train, val = read_texts(example / "train.csv"), read_texts(example / "val.csv", classes=None)
    assert len(train) == 1200 and len(val) == 300 and train.classes == val.classes and len(train.classes) == 8
    words = [len(text.split()) for text in train.texts + val.texts]
    assert min(words) >= 5 and max(words) <= 40
    assert np.bincount(val.labels).max() - np.bincount(val.labels).min() <= 1  # val labels are not flipped
    assert len(set(train.texts)) > 0.95 * len(train)  # not a handful of sentences repeated
