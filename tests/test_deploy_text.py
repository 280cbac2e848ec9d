"""Deploying a text classifier as images deploy: over the loopback sshd of test_deploy, to a temp folder.

The bundle ships the export's tokenizer.json and preprocess_text.py beside the runner, so the
device turns raw texts into token ids with `tokenizers` alone and must predict what the host's
ONNX Runtime predicts on the same texts. The val sample is token ids (and the raw texts, which the
device tokenises again in the smoke step), the benchmark times every input at the recorded
max_length and reports tokens a second, and a TensorRT bundle gives trtexec a shape per input.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compress.cli import main
from compress.core.fileio import read_json, sha256_file
from compress.stages.deploy import make_val_sample
from deploy.bundle import choose, make_bundle, read_run
from deploy.release import deploy_bundle, probe
from deploy.runner import device_bench, inference
from deploy.runner.runner import RunnerError
from deploy.targets import DeviceError, parse_target
from test_deploy import FAKE_JETSON, copy_of, current_release, deploy, releases, sshd  # noqa: F401

MAX_LENGTH = 12
TOPICS = {"sports": ["goal", "match", "striker", "league", "coach", "referee"],
          "food": ["soup", "bread", "café", "recipe", "dessert", "noodles"],
          "science": ["galaxy", "molecule", "telescope", "genome", "atoms", "fossil"]}
FILLER = ["the", "a", "today", "we", "saw", "naïve", "Über", "東京", "news", "very", "and", "then"]
# What a user hands the device: accents, CJK, an emoji, a text far longer than max_length (cut to it).
TEXTS = ["The striker scored a late goal in the match", "A bowl of noodles and fresh bread at the café",
         "Astronomers saw a distant galaxy through the telescope", "Naïve Über 東京 soup 🙂",
         "genome " * 40 + "referee", "today", "Coach praised the league; the dessert was fine"]
DEVICE_PYTHON = os.environ.get("COMPRESS_TEST_DEVICE_PYTHON")


def write_texts(path: Path, count: int, seed: int) -> None:
    """`text,label` rows: two words of the topic among fillers, so a tiny BERT learns it in a few epochs."""
    import csv

    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for index in range(count):
            label = list(TOPICS)[index % len(TOPICS)]
            words = rng.sample(TOPICS[label], 2) + rng.sample(FILLER, rng.randint(1, 8))
            rng.shuffle(words)
            writer.writerow([" ".join(words).capitalize() + rng.choice([".", "!", " 🙂", ""]), label])


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A tiny text pipeline (180 training texts, a one-layer BERT teacher and student), run once for the module."""
    import yaml

    folder = tmp_path_factory.mktemp("text")
    write_texts(folder / "train.csv", 180, 0)
    write_texts(folder / "val.csv", 60, 1)
    config = {
        "name": "tiny-text",
        "data": {"source": "text", "path": str(folder / "train.csv"), "val_path": str(folder / "val.csv"),
                 "text": {"max_length": MAX_LENGTH, "vocab_size": 200}},
        "teacher": {"model": "hf-config:bert", "kwargs": {"layers": 1, "hidden": 32, "heads": 2},
                    "train": {"epochs": 3, "batch_size": 32, "lr": 0.01}},
        "student": {"model": "hf-config:bert", "kwargs": {"layers": 1, "hidden": 16, "heads": 2}},
        "stages": {"distill": {"epochs": 4, "batch_size": 32, "lr": 0.02, "alpha": 0.5, "temperature": 2.0},
                   "build": {"targets": ["onnxruntime:fp32"]},
                   "benchmark": {"batch_sizes": [1, 4], "runs": 3, "rounds": 1, "warmup": 0, "warmup_seconds": 0,
                                 "min_seconds": 0, "memory": False}},
    }
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    assert main(["--quiet", "run", str(folder / "pipeline.yaml"), "--run-dir", str(folder / "run")]) == 0
    return folder / "run"


@pytest.fixture(scope="module")
def text_deployed(sshd, text_run, tmp_path_factory):  # noqa: F811
    """A device folder with the text run deployed over ssh; tests that change it work on copies."""
    device = tmp_path_factory.mktemp("text-deployed") / "device"
    assert deploy(text_run, "--target", sshd.target("ssh", device), *sshd.client_args(), quiet=True) == 0
    return device


def write_lines(path: Path, texts: list[str]) -> Path:
    """The texts one a line as an editor may save them: a byte-order mark, CRLF, blank lines between."""
    path.write_bytes(("\ufeff" + "\r\n\r\n".join(texts) + "\r\n   \r\n").encode("utf-8"))
    return path


def host_logits(run_dir: Path, texts: list[str]) -> np.ndarray:
    """What the host predicts: its own tokenizer code on the export's tokenizer.json, then ONNX Runtime."""
    import onnxruntime as ort

    from compress.tasks.text_classification.tokenizer import encode, load_tokenizer

    arrays = encode(load_tokenizer(run_dir / "stages" / "export" / "tokenizer.json"), texts, MAX_LENGTH)
    session = ort.InferenceSession(str(run_dir / "stages" / "export" / "student.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, arrays)[0]


def device_infer(release: Path, *inputs, python: str = sys.executable) -> tuple[int, list[dict]]:
    """`runner.py infer` run from the release folder as a user runs it on the device: exit code, its JSON lines
    (one per input; one {"error": ...} line on failure)."""
    done = subprocess.run([python, str(release / "runner.py"), "infer", str(release), *map(str, inputs)],
                          capture_output=True, text=True)
    return done.returncode, [json.loads(line) for line in done.stdout.strip().splitlines()]


def assert_device_predicts_as_the_host(run_dir: Path, release: Path, folder: Path, python: str = sys.executable):
    labels = read_json(release / "manifest.json")["labels"]
    expected = host_logits(run_dir, TEXTS)
    assert len(set(expected.argmax(1).tolist())) >= 2  # a model that answers one class proves nothing here
    code, answer = device_infer(release, write_lines(folder / "texts.txt", TEXTS), "--output", folder / "logits.npy",
                                python=python)
    assert code == 0, answer
    predictions = answer  # one JSON line per text
    assert [p["text"] for p in predictions] == TEXTS and {p["file"] for p in predictions} == {str(folder / "texts.txt")}
    assert [p["label"] for p in predictions] == [labels[i] for i in expected.argmax(1)]
    np.testing.assert_allclose(np.load(folder / "logits.npy"), expected, atol=1e-5)
    probabilities = np.exp(expected - expected.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    assert [p["score"] for p in predictions] == pytest.approx(probabilities.max(1).tolist(), abs=1e-5)


# ---------------------------------------------------------------- deploy, and raw texts on the device


def test_a_text_run_deploys_and_the_device_classifies_raw_texts_as_the_host_does(text_run, text_deployed, sshd,
                                                                                  tmp_path):  # noqa: F811
    release = text_deployed / "current"
    manifest = read_json(release / "manifest.json")
    tokenizer = text_run / "stages" / "export" / "tokenizer.json"
    assert (release / "tokenizer.json").read_bytes() == tokenizer.read_bytes()
    assert manifest["files"]["tokenizer.json"] == sha256_file(tokenizer) and "preprocess_text.py" in manifest["files"]
    assert "input" not in manifest  # the one-input entry is an image model's
    assert [(s["name"], s["dtype"], s["shape"]) for s in manifest["inputs"]] == [
        (name, "int64", ["batch", "sequence"]) for name in ("input_ids", "attention_mask", "token_type_ids")]
    text = manifest["preprocessing"]["text"]
    assert text["tokenizer"] == "tokenizer.json" and text["max_length"] == MAX_LENGTH
    assert text["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    with np.load(release / "val_sample.npz") as sample:
        assert {"input_ids", "attention_mask", "token_type_ids", "y", "host_top1"} <= set(sample.files)
        assert "x" not in sample.files and sample["input_ids"].dtype == np.int64
        assert len(sample["input_ids"]) == 60 and sample["input_ids"].shape[1] <= MAX_LENGTH

    results = read_json(text_run / "stages" / "deploy" / parse_target(sshd.target("ssh", text_deployed)).slug
                        / "results.json")
    assert results["device"]["tokenizers"] and {r["batch_size"] for r in results["rows"]} == {1, 4}
    for row in results["rows"]:  # timed by the host's harness at the recorded max_length, every input full
        assert row["timer"] == "runner" and row["sequence_length"] == MAX_LENGTH
        assert row["tokens_per_s"] == pytest.approx(row["batch_size"] * MAX_LENGTH * 1000 / row["latency_ms"]["p50"])
        assert row["accuracy"]["agreement_with_host"] == 1.0 and row["accuracy"]["samples"] == 60
    assert "## Device results" in (text_run / "report.md").read_text()

    assert_device_predicts_as_the_host(text_run, release, tmp_path)

    # The host's token ids in a .npz classify the same.
    from compress.tasks.text_classification.tokenizer import encode, load_tokenizer

    np.savez(tmp_path / "ids.npz", **encode(load_tokenizer(tokenizer), TEXTS, MAX_LENGTH))
    code, answer = device_infer(release, tmp_path / "ids.npz")
    assert code == 0 and [a["label"] for a in answer] == [manifest["labels"][i]
                                                         for i in host_logits(text_run, TEXTS).argmax(1)]
    assert [(a["file"], a["index"]) for a in answer] == [(str(tmp_path / "ids.npz"), i) for i in range(len(TEXTS))]


@pytest.mark.skipif(not DEVICE_PYTHON, reason="COMPRESS_TEST_DEVICE_PYTHON not set (.ci/run sets it)")
def test_texts_are_tokenised_on_jetpack_5s_python_3_8_as_on_the_host(text_run, sshd, tmp_path):  # noqa: F811
    device = tmp_path / "device"
    target = sshd.target("ssh", device, python=DEVICE_PYTHON)
    assert deploy(text_run, "--target", target, *sshd.client_args(), quiet=True) == 0
    results = read_json(text_run / "stages" / "deploy" / parse_target(target).slug / "results.json")
    assert results["device"]["python"].startswith("3.8.") and results["device"]["tokenizers"]
    assert all(r["accuracy"]["agreement_with_host"] == 1.0 and r["tokens_per_s"] > 0 for r in results["rows"])
    assert_device_predicts_as_the_host(text_run, device / "current", tmp_path, python=DEVICE_PYTHON)


# ---------------------------------------------------------------- bad inputs: one line naming the file


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"", "empty.txt: no text in it (one text per line)"),
    ("blank.txt", b"\n   \r\n\n", "blank.txt: no text in it"),
    ("latin1.txt", "a fine line\ncaf\u00e9 au lait\n".encode("latin-1"), "latin1.txt:2: not UTF-8 text"),
    ("photo.png", b"\x89PNG", "photo.png: not an input this text model takes"),
    ("raw.npy", None, "raw.npy: not an input this text model takes"),
    ("ids.npz", None, "ids.npz: no attention_mask, token_type_ids array"),
    ("junk.npz", b"not a zip", "junk.npz: not a .npz of token ids"),
])
def test_a_bad_text_input_is_one_line_naming_the_file(text_deployed, tmp_path, name, content, message):
    path = tmp_path / name
    if name == "raw.npy":
        np.save(path, np.zeros((2, 4), dtype=np.int64))
    elif name == "ids.npz":
        np.savez(path, input_ids=np.ones((2, 4), dtype=np.int64))
    else:
        path.write_bytes(content)
    done = subprocess.run([sys.executable, str(text_deployed / "current" / "runner.py"), "infer",
                           str(text_deployed / "current"), str(path)], capture_output=True, text=True)
    assert done.returncode == 1 and len(done.stdout.strip().splitlines()) == 1, done.stdout + done.stderr
    assert message in json.loads(done.stdout)["error"] and not done.stderr.strip()


def test_a_text_file_and_an_npz_together_are_refused(text_deployed, tmp_path):
    np.savez(tmp_path / "ids.npz", input_ids=np.ones((1, 3), dtype=np.int64))
    code, answer = device_infer(text_deployed / "current", write_lines(tmp_path / "a.txt", ["goal"]),
                                tmp_path / "ids.npz")
    assert code == 1 and len(answer) == 1
    assert answer[0]["error"].endswith("ids.npz: give one .npz alone, or text files only")


# ---------------------------------------------------------------- the tokenizer is checked like every file


def test_a_tampered_tokenizer_fails_the_checksum_and_current_stays(text_run, text_deployed, sshd, tmp_path):  # noqa: F811
    device = copy_of(text_deployed, tmp_path)
    before = current_release(device)
    target = parse_target(sshd.target("ssh", device), sshd.options())
    bundle = make_bundle(text_run, choose(text_run, read_run(text_run), None, None), tmp_path / "bundles",
                         make_val_sample, 16)
    tokenizer = bundle.directory / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"[UNK]"', '"[UNK2]"', 1))  # valid JSON, other ids
    with pytest.raises(DeviceError, match="checksum mismatch: tokenizer.json"):
        deploy_bundle(target, bundle, probe(target, "onnxruntime", text=True), lambda message: None)
    assert current_release(device) == before and releases(device) == [before]
    assert not list((device / "releases").glob(".incoming-*"))


def test_the_device_refuses_texts_when_its_tokenizer_changed_after_the_deploy(text_deployed, tmp_path):
    device = copy_of(text_deployed, tmp_path)
    release = device / "current"
    texts = write_lines(tmp_path / "texts.txt", TEXTS)
    tokenizer = release / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"lowercase": true', '"lowercase": false'))
    code, answer = device_infer(release, texts)
    assert code == 1 and len(answer) == 1
    assert answer[0]["error"].startswith("checksum mismatch: tokenizer.json (sha256 ")
    done = subprocess.run([sys.executable, str(release / "runner.py"), "verify", str(release)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "checksum mismatch: tokenizer.json" in done.stdout


def test_the_smoke_step_refuses_a_device_that_tokenises_otherwise(text_deployed, tmp_path):
    release = copy_of(text_deployed, tmp_path) / "current"
    manifest = read_json(release / "manifest.json")
    sample = inference.load_sample(release, manifest)
    assert inference.check_sample(release, manifest, sample) == {"texts": 60, "identical": True}
    # The host's ids of one text no longer match what this tokenizer makes of it (another tokenizers would do that).
    sample["input_ids"] = sample["input_ids"].copy()
    sample["input_ids"][3, 1] += 1
    with pytest.raises(RunnerError, match="encodes 1 of 60 val texts otherwise than the host did"):
        inference.check_sample(release, manifest, sample)


def test_a_device_without_tokenizers_is_refused_before_anything_changes(text_run, tmp_path, capsys):
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n\n\nclass NoTokenizers:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'tokenizers':\n            raise ModuleNotFoundError(name)\n\n\n"
        "sys.meta_path.insert(0, NoTokenizers())\n")
    python = tmp_path / "python3"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={blocker} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    device = tmp_path / "device"
    assert deploy(text_run, "--target", f"local:{device}?python={python}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tokenizers is not installed for" in err and "pip install tokenizers" in err
    assert not device.exists()


# ---------------------------------------------------------------- TensorRT: a shape for every input


def test_a_tensorrt_bundle_gives_trtexec_a_batch_by_sequence_shape_per_input(text_run, tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "trtexec").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'calls.txt'}\n"
                                   f"exec {FAKE_JETSON / 'bin' / 'trtexec'} \"$@\"\n")
    (tools / "trtexec").chmod(0o755)
    device = tmp_path / "device"
    assert deploy(text_run, "--target", f"local:{device}?tools={tools}", "--runtime", "tensorrt", quiet=True) == 0
    manifest = read_json(device / "current" / "manifest.json")
    names = ("input_ids", "attention_mask", "token_type_ids")
    assert manifest["engine"]["input_shapes"] == {name: {"min": [1, 1], "opt": [1, 12], "max": [4, 12]} for name in names}
    script = (device / "current" / "build_engine.sh").read_text()
    for kind, shape in (("min", "1x1"), ("opt", "1x12"), ("max", "4x12")):
        assert f"--{kind}Shapes=" + ",".join(f"{name}:{shape}" for name in names) in script
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    timed = [call for call in calls if "--loadEngine=" in call]
    assert any("--shapes=input_ids:4x12,attention_mask:4x12,token_type_ids:4x12" in call for call in timed)
    assert any("--shapes=input_ids:1x12,attention_mask:1x12,token_type_ids:1x12" in call for call in timed)
    slug = parse_target(f"local:{device}?tools={tools}").slug
    rows = read_json(text_run / "stages" / "deploy" / slug / "results.json")["rows"]
    assert {r["backend"] for r in rows} == {"tensorrt"} and all(r["timer"] == "trtexec" and r["sequence_length"] == MAX_LENGTH for r in rows)
    assert all(r["tokens_per_s"] == pytest.approx(r["batch_size"] * 12 * 1000 / r["latency_ms"]["p50"]) for r in rows)


def test_trtexec_shapes_of_an_image_bundle_are_as_before():
    image = {"input": {"name": "input", "shape": [-1, 1, 8, 8], "dtype": "float32"},
             "preprocessing": {"mean": [0.5], "std": [0.5]}}
    assert device_bench.trtexec_shapes(image, 2) == "--shapes=input:2x1x8x8"
    text = {"inputs": [{"name": "input_ids", "shape": ["batch", "sequence"]},
                       {"name": "attention_mask", "shape": ["batch", "sequence"]}],
            "preprocessing": {"text": {"max_length": 64}}}
    assert device_bench.trtexec_shapes(text, 8) == "--shapes=input_ids:8x64,attention_mask:8x64"


def test_an_old_image_manifest_still_names_its_input():
    manifest = {"input": {"name": "input", "shape": [-1, 3, 4, 4]}, "preprocessing": {"mean": [0.5], "std": [0.5]}}
    assert inference.input_names(manifest) == ["input"] and inference.task_of(manifest) == "image-classification"
    assert device_bench.timed_inputs(manifest) == (3, 4, 4)
