"""A release's model on the device: open its session, score the shipped val sample, classify inputs.

Travels in the bundle beside runner.py, which loads it from the release folder; on the host the
same file is part of the deploy.runner package (its tests import it from there). What differs by
task is in one torch-free module per task, chosen by the task the bundle's manifest records
(`TASK_MODULES`): preprocess.py for images, preprocess_text.py (shipped with text models only,
beside its tokenizer.json) for texts. Each reads raw inputs into model feeds, gives the val
sample's feed and checks what the device must repeat exactly (a text model's tokenisation).
"""

from __future__ import annotations

from pathlib import Path

import importlib

try:  # on the host: the deploy.runner package
    from . import harness, releases, runner, sessions
except ImportError:  # on the device: loaded by runner.py from the release folder
    import harness
    import releases
    import runner
    import sessions

# The device's pre- and post-processing, one module per task (each torch-free, Python 3.8).
TASK_MODULES = {"image-classification": "preprocess", "text-classification": "preprocess_text"}


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


def task_of(manifest: dict) -> str:
    """The task the bundle records; a bundle made before tasks were recorded is told by its recorded steps."""
    recorded = manifest.get("task")
    if recorded:
        return recorded
    return "text-classification" if "text" in (manifest.get("preprocessing") or {}) else "image-classification"


def task_steps(release: Path, manifest: dict):
    """The release's per-task module: from the package on the host, from the release folder on the device."""
    name = TASK_MODULES.get(task_of(manifest))
    if name is None:
        raise runner.RunnerError(f"manifest.json: task {task_of(manifest)!r}: this runner has no steps for it "
                                 f"(it knows {', '.join(TASK_MODULES)}); deploy it with the toolchain that made it")
    if __package__:
        return importlib.import_module(f"{__package__}.{name}")
    return runner.release_module(release, name)


def input_names(manifest: dict) -> list:
    """The model's input names in graph order (one `input` for a bundle made before input specs were recorded)."""
    return [spec["name"] for spec in manifest.get("inputs") or [manifest["input"]]]


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
    x = task_steps(release, manifest).sample_inputs(sample, input_names(manifest))
    return accuracy(harness.predict(session.infer, x), sample["y"], sample["host_top1"])


def check_sample(release: Path, manifest: dict, sample: dict):
    """What the device must repeat exactly, checked on the val sample before anything is switched (a text
    model's tokenisation: the same token ids as the host's); None where the task has nothing to check."""
    return task_steps(release, manifest).check_sample(release, manifest, sample, input_names(manifest))


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
    """Classify raw inputs (image files, lines of text files) or one array file of model inputs.

    The release's task module reads them (refusing what its model does not take, naming the file) into
    chunks of model feeds; the answer is one record per input (`records`): {"file", "label", "score"}
    per image file, {"file", "text", ...} per line of a text file, {"file", "index", ...} per array row.
    """
    import numpy as np

    manifest = releases.read_manifest(release)
    steps = task_steps(release, manifest)
    origins, chunks = steps.read_inputs(release, manifest, [Path(p) for p in inputs], preprocessed,
                                        input_names(manifest))
    with open_release(release, manifest) as session:
        logits = np.concatenate([harness.predict(session.infer, x) for x in chunks])
    if output:
        np.save(output, logits)
    return records(origins or rows_of(inputs[0], len(logits)), logits, manifest["labels"])


def top_probability(logits) -> list:
    """The softmax probability of each row's top class (in float64, shifted by the row's max)."""
    import numpy as np

    shifted = logits.astype(np.float64) - logits.max(1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    return [round(float(p), 6) for p in probabilities.max(1)]
