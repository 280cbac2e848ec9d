"""A release's model on the device: open its session, score the shipped val sample, classify inputs.

Travels in the bundle beside runner.py, which loads it from the release folder; on the host the
same file is part of the deploy.runner package (its tests import it from there).
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
        return sessions.open_model(model, runtime, threads, manifest.get("precision"))
    except ImportError as error:
        raise runner.RunnerError(f"runtime {runtime} cannot be imported on this device: {error}") from None
    except sessions.SessionError as error:
        raise runner.RunnerError(str(error)) from None


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


def sample_accuracy(release: Path, manifest: dict, session) -> dict:
    sample = load_sample(release, manifest)
    return accuracy(harness.predict(session.infer, sample["x"]), sample["y"], sample["host_top1"])


def infer(release: Path, inputs: list, output: Path | None, preprocessed: bool) -> dict:
    """Classify one .npy of inputs, or image files; raw inputs go through the recorded preprocessing first.

    A .npy answers with its labels in order (`predictions`); image files with one
    {"file", "label", "score"} each, the score being the top class's softmax probability.
    """
    import numpy as np

    manifest = releases.read_manifest(release)
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
    labels = manifest["labels"]
    predicted = [labels[i] for i in logits.argmax(1).tolist()]
    if not images:
        return {"predictions": predicted, "output": str(output) if output else None}
    scores = top_probability(logits)
    return {"predictions": [{"file": str(path), "label": label, "score": score}
                            for path, label, score in zip(inputs, predicted, scores)],
            "output": str(output) if output else None}


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
