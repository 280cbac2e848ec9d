"""A release's model on the device: open its session, score the shipped val sample, classify inputs.

Travels in the bundle beside runner.py, which loads it from the release folder; on the host the
same file is part of the deploy.runner package (its tests import it from there). A text model's
bundle also carries preprocess_text.py and its tokenizer.json: raw texts are tokenised here with
`tokenizers` alone (never torch or transformers), and its val sample holds token ids.
"""

from __future__ import annotations

from pathlib import Path

try:  # on the host: the deploy.runner package
    from . import harness, releases, runner, sessions
    from .preprocess import IMAGE_SUFFIXES, is_image, preprocess, preprocess_images
except ImportError:  # on the device: loaded by runner.py from the release folder
    import harness
    import releases
    import runner
    import sessions
    from preprocess import IMAGE_SUFFIXES, is_image, preprocess, preprocess_images


def model_path(release: Path, manifest: dict) -> Path:
    """The file a session loads: the engine built on the device for TensorRT, the shipped model otherwise."""
    runtime = manifest["runtime"]
    return release / (manifest["engine"]["file"] if runtime == "tensorrt" else manifest["model_file"])


def open_release(release: Path, manifest: dict, threads: int | None = None):
    """The release's model as a session (the same session classes the host measured with)."""
    runtime = manifest["runtime"]
    model = model_path(release, manifest)
    if not model.is_file():
        raise runner.RunnerError(f"{model}: not found" + (" (run build_engine.sh first)" if runtime == "tensorrt" else ""))
    try:
        return sessions.open_model(model, runtime, threads, manifest.get("precision"),
                                   float_precision=manifest.get("float_precision"))
    except ImportError as error:
        raise runner.RunnerError(f"runtime {runtime} cannot be imported on this device: {error}") from None
    except sessions.SessionError as error:
        raise runner.RunnerError(str(error)) from None


def takes_text(manifest: dict) -> bool:
    """Whether the release's model reads token ids made from raw texts (its bundle records the text steps)."""
    return "text" in (manifest.get("preprocessing") or {})


def input_names(manifest: dict) -> list:
    """The model's input names in graph order (one `input` for a bundle made before input specs were recorded)."""
    return [spec["name"] for spec in manifest.get("inputs") or [manifest["input"]]]


def text_steps(release: Path):
    """preprocess_text.py, from the package on the host or from the release folder on the device.

    Loaded only for a text model: an image bundle does not carry it.
    """
    try:
        from . import preprocess_text
    except ImportError:
        preprocess_text = runner.release_module(release, "preprocess_text")
    return preprocess_text


def load_sample(release: Path, manifest: dict) -> dict:
    """The labelled, already preprocessed val sample of the bundle, with the host's predictions."""
    import numpy as np

    with np.load(release / manifest["val_sample"], allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def accuracy(logits, labels, host_top1) -> dict:
    """Top-1 and top-5 on the sample, and how often the device agrees with the host's top-1."""
    predicted = logits.argmax(1)
    return {"top1": harness.topk_accuracy(logits, labels, 1), "top5": harness.topk_accuracy(logits, labels, 5),
            "agreement_with_host": float((predicted == host_top1).mean()), "samples": int(len(labels))}


def sample_inputs(sample: dict, manifest: dict):
    """What the model takes from the val sample: its `x` batch, or a text model's token-id arrays by name."""
    if takes_text(manifest):
        return {name: sample[name] for name in input_names(manifest)}
    return sample["x"]


def sample_accuracy(release: Path, manifest: dict, session) -> dict:
    sample = load_sample(release, manifest)
    return accuracy(harness.predict(session.infer, sample_inputs(sample, manifest)), sample["y"], sample["host_top1"])


def sample_texts(sample: dict) -> list:
    """The raw val texts a text bundle ships beside their token ids (UTF-8 end to end, and where each begins)."""
    data, offsets = sample["texts_utf8"].tobytes(), sample["text_offsets"].tolist()
    return [data[start:stop].decode("utf-8") for start, stop in zip(offsets[:-1], offsets[1:])]


def check_tokenization(release: Path, manifest: dict, sample: dict) -> dict:
    """Tokenise the shipped val texts here and compare with the host's token ids: raw texts then get the
    predictions the host measured, or the deploy stops (another `tokenizers` may split words otherwise)."""
    import numpy as np

    if "texts_utf8" not in sample:
        return {"texts": 0}
    texts = sample_texts(sample)
    encoded = check_tokenizer(release, manifest).encode_texts(release, manifest, texts)
    differ = np.zeros(len(texts), dtype=bool)
    for name in input_names(manifest):
        ours, hosts = encoded[name], sample[name]
        if ours.shape != hosts.shape:
            differ[:] = True
            break
        differ |= (ours != hosts).any(axis=1)
    if differ.any():
        first = int(np.flatnonzero(differ)[0])
        raise runner.RunnerError(f"tokenizers {runner.module_version('tokenizers')} on this device encodes "
                                 f"{int(differ.sum())} of {len(texts)} val texts otherwise than the host did "
                                 f"(the first: {texts[first][:60]!r}); install the host's tokenizers version")
    return {"texts": len(texts), "identical": True}


def check_tokenizer(release: Path, manifest: dict):
    """The release's preprocess_text module, once its tokenizer.json matches the manifest's checksum.

    A tokenizer changed after the deploy would quietly give other token ids: refused, as `verify` does.
    """
    steps = text_steps(release)
    steps.check_tokenizer_file(release, manifest, releases.sha256_file)
    return steps


def records(origins: list, logits, labels: list) -> list:
    """One record per input, in input order (where it came from, its label, the top class's softmax
    probability): `runner.py infer` prints each as a JSON line, which a script reads one input at a time."""
    predicted = [labels[i] for i in logits.argmax(1).tolist()]
    return [{**origin, "label": label, "score": score}
            for origin, label, score in zip(origins, predicted, top_probability(logits))]


def rows_of(path: Path, count: int) -> list:
    """Where each row of one array file came from: the file and the row's index."""
    return [{"file": str(path), "index": index} for index in range(count)]


def infer(release: Path, inputs: list, output: Path | None, preprocessed: bool) -> list:
    """Classify one .npy of inputs, or image files; raw inputs go through the recorded preprocessing first.

    A text model's release takes text files or one .npz of token ids instead (`infer_texts`).
    The answer is one record per input (`records`): {"file", "label", "score"} per image file,
    {"file", "index", "label", "score"} per row of a .npy.
    """
    import numpy as np

    manifest = releases.read_manifest(release)
    if takes_text(manifest):
        return infer_texts(release, manifest, inputs, output, preprocessed)
    images = image_inputs(inputs, preprocessed)
    if images:
        x = preprocess_images(inputs, manifest)
    else:
        x = np.load(inputs[0], allow_pickle=False)
        x = x.astype(np.float32) if preprocessed else preprocess(x, manifest)
    with open_release(release, manifest) as session:
        logits = harness.predict(session.infer, x)
    if output:
        np.save(output, logits)
    origins = [{"file": str(path)} for path in inputs] if images else rows_of(inputs[0], len(logits))
    return records(origins, logits, manifest["labels"])


def image_inputs(inputs: list, preprocessed: bool) -> bool:
    """True for image files, False for one .npy; anything else, or a mix, is refused naming the file."""
    for path in inputs:
        if not (is_image(path) or str(path).lower().endswith(".npy")):
            raise runner.RunnerError(f"{path}: not an input the runner takes (one .npy, or image files: "
                                     f"{' '.join(IMAGE_SUFFIXES)})")
    arrays = [path for path in inputs if not is_image(path)]
    if arrays and len(inputs) > 1:
        raise runner.RunnerError(f"{arrays[0]}: give one .npy alone, or image files only")
    if arrays:
        return False
    if preprocessed:
        raise runner.RunnerError(f"{inputs[0]}: --preprocessed applies to a .npy of normalised inputs, "
                                 "not to image files")
    return True


def top_probability(logits) -> list:
    """The softmax probability of each row's top class (in float64, shifted by the row's max)."""
    import numpy as np

    shifted = logits.astype(np.float64) - logits.max(1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    return [round(float(p), 6) for p in probabilities.max(1)]


TEXT_CHUNK = 4096  # texts tokenised and classified at a time: memory stays flat over a long file


def infer_texts(release: Path, manifest: dict, inputs: list, output, preprocessed: bool) -> list:
    """Classify the lines of text files (one text per non-empty line), or one .npz of token ids.

    One record per text, {"file", "text", "label", "score"}, or per row of the .npz, {"file",
    "index", "label", "score"}, as image files and a .npy answer.
    """
    import numpy as np

    if text_inputs(release, inputs, preprocessed):
        texts = [(path, text) for path in inputs for text in text_steps(release).read_text_lines(path)]
        chunks = [[text for _, text in texts[i:i + TEXT_CHUNK]] for i in range(0, len(texts), TEXT_CHUNK)]
    else:
        texts, chunks = None, [token_ids(inputs[0], manifest)]
    steps = check_tokenizer(release, manifest) if texts is not None else None
    logits = []
    with open_release(release, manifest) as session:
        for chunk in chunks:
            x = steps.encode_texts(release, manifest, chunk) if texts is not None else chunk
            logits.append(harness.predict(session.infer, x))
    logits = np.concatenate(logits)
    if output:
        np.save(output, logits)
    origins = [{"file": str(path), "text": text} for path, text in texts] if texts is not None \
        else rows_of(inputs[0], len(logits))
    return records(origins, logits, manifest["labels"])


def text_inputs(release: Path, inputs: list, preprocessed: bool) -> bool:
    """True for text files, False for one .npz of token ids; anything else, or a mix, is refused naming the file."""
    steps = text_steps(release)
    for path in inputs:
        if not (steps.is_text_file(path) or str(path).lower().endswith(".npz")):
            raise runner.RunnerError(f"{path}: not an input this text model takes (text files "
                                     f"{' '.join(steps.TEXT_SUFFIXES)}, one text per line, or one .npz of token ids)")
    arrays = [path for path in inputs if not steps.is_text_file(path)]
    if arrays and len(inputs) > 1:
        raise runner.RunnerError(f"{arrays[0]}: give one .npz alone, or text files only")
    if arrays:
        return False
    if preprocessed:
        raise runner.RunnerError(f"{inputs[0]}: --preprocessed applies to a .npz of token ids, not to text files")
    return True


def token_ids(path: Path, manifest: dict) -> dict:
    """The model's int64 inputs from a .npz that holds one (n, L) array per input name."""
    import zipfile

    import numpy as np

    if not path.is_file():
        raise runner.RunnerError(f"{path}: not found")
    names = input_names(manifest)
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):
            raise ValueError(f"it holds one array, not one per input name ({', '.join(names)})")
        with data:
            arrays = {name: data[name] for name in names if name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise runner.RunnerError(f"{path}: not a .npz of token ids ({error or type(error).__name__})") from None
    missing = [name for name in names if name not in arrays]
    if missing:
        raise runner.RunnerError(f"{path}: no {', '.join(missing)} array (the model takes {', '.join(names)})")
    shapes = {array.shape for array in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or not next(iter(shapes))[0]:
        raise runner.RunnerError(f"{path}: the token-id arrays must all be (n, length) with n >= 1, not "
                                 f"{', '.join(str(list(a.shape)) for a in arrays.values())}")
    return arrays
