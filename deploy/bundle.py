"""A deploy bundle: the chosen artifact, a labelled val sample, the runner and manifest.json.

The manifest holds the sha256 of every file (checked on the device before anything runs), the
model's inputs (`inputs`, a list of specs; an image model's one input also as `input`),
preprocessing, labels, and the source run and its stage keys, so a release on a device can always
be traced back to the run that made it. For TensorRT the bundle carries the ONNX and
`build_engine.sh`; the engine itself is built on the device. A text model's bundle carries the
export's tokenizer.json and preprocess_text.py too, so the device tokenises raw texts as the host did.
A causal LM's bundle is made by deploy/lm_bundle.py instead: a `Packer` says which artifact of a run a
deploy ships and how its bundle is made, so the rest of a deploy is the same for every kind of model.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from compress.core.errors import UsageError
from compress.core.fileio import read_json, sha256_file, sha256_json, write_json, write_text
from deploy.engines.interface import onnx_inputs
from deploy.engines.tensorrt import input_profile_shapes
from deploy.engines.trtexec import build_script
from deploy.runner import RUNNER_DIR, RUNNER_FILES
from deploy.runner.harness import engine_agreement
from deploy.runner.preprocess_text import INPUT_NAMES

RUNTIMES = ("onnxruntime", "openvino", "tensorrt")
VAL_SAMPLE = "val_sample.npz"
TEXT_RUNNER_FILE = "preprocess_text.py"  # shipped with text models only: an image bundle keeps its files


@dataclass
class Choice:
    """One deployable artifact: what runs on the device and where its files come from."""

    name: str  # model.backend.precision
    model: str
    runtime: str
    precision: str
    files: dict[str, Path]  # bundle name -> source file
    model_file: str
    float_precision: str | None = None  # an int8 OpenVINO engine's ops left in float run in this (mixed precision)


@dataclass
class ValSample:
    """What the device scores itself on: preprocessed, labelled val inputs with the host's top-1.

    Made by whoever knows the run's data (the compress side: its data sources and splits), so the
    deploy package never reads a dataset itself.
    """

    # x (preprocessed), y, host_top1; a text model's token-id arrays by input name instead of x, and its
    # raw texts (texts_utf8, text_offsets) so that the device can check its own tokenisation
    arrays: dict[str, np.ndarray]
    preprocessing: dict[str, Any]  # what the device applies to raw inputs
    labels: list[str]
    task: str | None = None  # the run's task: the device's runner picks its per-task module by it


# (run dir, the run's fp32 ONNX, at most this many samples) -> the val sample of the bundle.
SampleMaker = Callable[[Path, Path, int], ValSample]


@dataclass
class Bundle:
    directory: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return self.manifest["version"]


@dataclass
class Packer:
    """Which artifact of a run a deploy ships (`choose`: run dir, run.json, --runtime, --artifact, the target's
    default runtime) and its bundle (`make`: run dir, choice, the folder of bundles), and what the device needs
    besides the runtime: `tokenizers` to tokenise raw texts (`text`), or tokenizers or onnxruntime-genai to turn
    prompts into tokens (`generation`)."""

    choose: Callable[[Path, dict[str, Any], str | None, str | None, str], Choice]
    make: Callable[[Path, Choice, Path], Bundle]
    text: bool = False
    generation: bool = False


def classifier_packer(record: dict[str, Any], make_sample: SampleMaker, val_samples: int) -> Packer:
    """The bundles of an image or text classifier: a built engine (or the ONNX for TensorRT) and a val sample."""
    return Packer(choose, lambda run_dir, choice, out_root: make_bundle(run_dir, choice, out_root, make_sample,
                                                                        val_samples), text=takes_text(record))


def read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    if not path.is_file():
        raise UsageError(f"{path}: not found (is {run_dir} a run dir of `compress run`?)")
    record = read_json(path)
    build = record.get("stages", {}).get("build", {})
    if build.get("status") != "done":
        raise UsageError(f"{path}: stages.build: no finished build stage (run the pipeline with a build section first)")
    return record


def failed_gates(report: dict[str, Any]) -> list[str]:
    """The gates a run's report stage judged failed (its outputs in run.json); none when it judged none."""
    return [g.get("gate", "?") for g in report.get("gates") or [] if isinstance(g, dict) and not g.get("passed")]


def gates_refusal(failed: list[str], override: str) -> str:
    """Why a run is not deployed: the one sentence `compress deploy` and the pipeline's deploy stage both say."""
    return f"not deployed: gate(s) failed ({', '.join(failed)}); {override} deploys anyway"


def candidates(run_dir: Path, record: dict[str, Any]) -> list[Choice]:
    """Every artifact of the run that can be deployed, by runtime."""
    stages = record["stages"]
    build = stages["build"].get("outputs", {})
    export = stages.get("export", {}).get("outputs", {})
    found: list[Choice] = []
    for engine in build.get("engines", []):
        if engine["backend"] == "tensorrt":
            continue  # engines are built on the device, never copied
        folder = run_dir / engine["dir"]
        files = {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}
        found.append(Choice(f"{engine['model']}.{engine['backend']}.{engine['precision']}", engine["model"],
                            engine["backend"], engine["precision"], files, Path(engine["artifact"]).name,
                            engine.get("float_precision")))
    # A strongly typed TensorRT build takes its precision from the ONNX: fp16 needs the FP16 copy.
    onnx_for = {"fp32": export.get("onnx"), "fp16": export.get("onnx_fp16"), "int8": export.get("onnx_qdq")}
    wanted = {"fp32", "fp16"} | {d["precision"] for d in build.get("deferred", []) if d.get("backend") == "tensorrt"}
    wanted |= {e["precision"] for e in build.get("engines", []) if e["backend"] == "tensorrt"}
    for precision in ("fp32", "fp16", "int8"):
        if precision in wanted and onnx_for[precision]:
            found.append(Choice(f"student.tensorrt.{precision}", "student", "tensorrt", precision,
                                {"model.onnx": run_dir / onnx_for[precision]}, "model.onnx"))
    return found


def choose(run_dir: Path, record: dict[str, Any], runtime: str | None, artifact: str | None,
           default_runtime: str = "onnxruntime") -> Choice:
    if runtime is not None and runtime not in RUNTIMES:
        raise UsageError(f"--runtime: unknown runtime '{runtime}'; known: {', '.join(RUNTIMES)}")
    found = candidates(run_dir, record)
    if artifact is not None:
        match = [c for c in found if c.name == artifact or c.name == Path(artifact).name]
        if not match:
            names = ", ".join(c.name for c in found) or "none"
            raise UsageError(f"--artifact: no artifact '{artifact}' in {run_dir / 'run.json'}; deployable: {names}")
        if runtime is not None and match[0].runtime != runtime:
            raise UsageError(f"--artifact {artifact} runs on {match[0].runtime}, not --runtime {runtime}")
        return match[0]
    runtime = runtime or default_runtime
    of_runtime = [c for c in found if c.runtime == runtime]
    if not of_runtime:
        have = sorted({c.runtime for c in found})
        raise UsageError(f"--runtime {runtime}: {run_dir / 'run.json'} has no {runtime} artifact "
                         f"(build one, or use --runtime {' or '.join(have) or 'onnxruntime'})")
    recommended = record["stages"].get("report", {}).get("outputs", {}).get("recommended")
    preferred = [c for c in of_runtime if c.name == recommended]
    if runtime == "tensorrt":
        preferred = preferred or [c for c in of_runtime if c.precision == "fp16"]
    return (preferred or of_runtime)[0]


def prune_bundles(out_root: Path, keep: int, in_use: set[str]) -> list[str]:
    """Remove all but the `keep` newest bundles (names start with their UTC time), never one in `in_use`."""
    names = sorted(p.name for p in out_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    pruned = [name for name in names[:-keep] if name not in in_use]
    for name in pruned:
        shutil.rmtree(out_root / name, ignore_errors=True)
    return pruned


def takes_text(record: dict[str, Any]) -> bool:
    """Whether the run's model reads token ids: its export wrote a tokenizer.json."""
    return bool(record["stages"].get("export", {}).get("outputs", {}).get("tokenizer"))


def model_inputs(onnx_path: Path, sample: dict[str, np.ndarray], text: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The model's inputs as specs: an image's per-sample dims from the data (where the ONNX leaves H/W
    dynamic), a text model's every input with axes "batch" and "sequence", as the harness times them."""
    specs = onnx_inputs(onnx_path)
    if text is None:
        return [{**specs[0], "shape": ["batch", *(int(d) for d in sample["x"].shape[1:])]}]
    return [{**spec, "shape": [d if isinstance(d, int) and d > 0 else ("batch" if axis == 0 else "sequence")
                               for axis, d in enumerate(spec["shape"])]} for spec in specs]


def ship_text_steps(run_dir: Path, export: dict[str, Any], staging: Path, text: dict[str, Any],
                    inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Copy the export's tokenizer.json and preprocess_text.py into the bundle; the text steps it records.

    The recorded `inputs` become the model's own input names, so the device makes exactly the arrays
    the model takes.
    """
    source, name = export.get("tokenizer"), str(text.get("tokenizer", ""))
    if not source or not (run_dir / source).is_file():
        raise UsageError(f"{run_dir / 'run.json'}: stages.export.tokenizer: no tokenizer.json recorded for this text "
                         "model (run the export stage again)")
    if Path(name).name != name or name in ("", ".", ".."):
        raise UsageError(f"{run_dir}: the val sample's preprocessing.text.tokenizer: {name!r} is not a file name")
    unknown = [spec["name"] for spec in inputs if spec["name"] not in INPUT_NAMES]
    if unknown:
        raise UsageError(f"{run_dir / export['onnx']}: input {unknown[0]!r} is not one a tokenizer makes "
                         f"({', '.join(INPUT_NAMES)})")
    shutil.copyfile(run_dir / source, staging / name)
    shutil.copyfile(RUNNER_DIR / TEXT_RUNNER_FILE, staging / TEXT_RUNNER_FILE)
    return {**text, "inputs": [spec["name"] for spec in inputs]}


def engine_recipe(staging: Path, precision: str, inputs: list[dict[str, Any]], batch_sizes: list[int],
                  text: dict[str, Any] | None) -> dict[str, Any]:
    """Write build_engine.sh (trtexec) and describe it: the batch over 1, the first and the largest batch
    size benchmarked, and for a text model each input's sequence over 1 to the recorded max_length."""
    batches = (1, batch_sizes[0], max(batch_sizes))
    if text is None:
        shapes = [(b, *inputs[0]["shape"][1:]) for b in batches]
        script = build_script("model.onnx", "model.engine", precision, *shapes, inputs[0]["name"])
        profile = {"min_shape": shapes[0], "opt_shape": shapes[1], "max_shape": shapes[2]}
    else:
        length = int(text["max_length"])
        input_shapes = input_profile_shapes(inputs, *batches, 1, length, length)
        script = build_script("model.onnx", "model.engine", precision, input_shapes=input_shapes)
        profile = {"input_shapes": input_shapes}
    write_text(staging / "build_engine.sh", script)
    (staging / "build_engine.sh").chmod(0o755)
    return {"script": "build_engine.sh", "file": "model.engine", "builder": "trtexec", **profile}


def image_input(path: Path) -> dict[str, Any]:
    """The first input of the ONNX: name, dtype and shape with -1 for every dynamic axis (the batch's too)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    first = next(i for i in graph.input if i.name not in initializers)
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in first.type.tensor_type.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(first.type.tensor_type.elem_type).name
    return {"name": first.name, "shape": [-1, *dims[1:]], "dtype": dtype}


def host_row(run_dir: Path, record: dict[str, Any], choice: Choice) -> dict[str, Any]:
    results = record["stages"].get("benchmark", {}).get("outputs", {}).get("results")
    if not results or not (run_dir / results).is_file():
        return {}
    rows = read_json(run_dir / results)["rows"]
    same = [r for r in rows if f"{r['model']}.{r['backend']}.{r['precision']}" == choice.name]
    torch_row = [r for r in rows if r["model"] == choice.model and r["backend"] == "torch"]
    return (same or torch_row or [{}])[0]


# Without gates.min_engine_agreement a device engine must agree with the host's predictions on 99% of the val
# sample: they come from another engine (a TensorRT fp16 plan is compared with the host's ONNX), so one sample
# on a decision boundary may flip where the host's own engines are held to 0.999.
DEVICE_AGREEMENT = 0.99


def device_agreement(gate, precision: str) -> float:
    return engine_agreement(gate, precision) if gate is not None else DEVICE_AGREEMENT


def make_bundle(run_dir: Path, choice: Choice, out_root: Path, make_sample: SampleMaker,
                val_samples: int = 256) -> Bundle:
    run_dir = Path(run_dir).resolve()
    record = read_json(run_dir / "run.json")
    export = record["stages"].get("export", {}).get("outputs", {})
    if not export.get("onnx"):
        raise UsageError(f"{run_dir / 'run.json'}: stages.export: no ONNX model recorded")
    val = make_sample(run_dir, run_dir / export["onnx"], val_samples)
    sample = val.arrays
    pipeline = yaml.safe_load((run_dir / "pipeline.yaml").read_text())
    bench = (pipeline.get("stages") or {}).get("benchmark") or {}
    staging = stage_files(out_root, choice)
    np.savez_compressed(staging / VAL_SAMPLE, **sample)
    preprocessing = dict(val.preprocessing)
    inputs = model_inputs(run_dir / export["onnx"], sample, preprocessing.get("text"))
    if preprocessing.get("text") is not None:
        preprocessing["text"] = ship_text_steps(run_dir, export, staging, preprocessing["text"], inputs)
    batch_sizes = bench.get("batch_sizes") or [1]
    engine = None
    if choice.runtime == "tensorrt":
        engine = engine_recipe(staging, choice.precision, inputs, batch_sizes, preprocessing.get("text"))
    # The one input of an image model as older runners read it.
    single = {} if preprocessing.get("text") is not None else {"input": image_input(run_dir / export["onnx"])}
    host = host_row(run_dir, record, choice)
    manifest = {
        **manifest_head(choice),
        **({"float_precision": choice.float_precision} if choice.float_precision else {}),
        "model_file": choice.model_file, "engine": engine,
        **single, "inputs": inputs,
        **({"task": val.task} if val.task else {}), "preprocessing": preprocessing, "labels": list(val.labels),
        "val_sample": VAL_SAMPLE,
        "bench": {"batch_sizes": batch_sizes, "runs": bench.get("runs", 30), "warmup": bench.get("warmup", 5),
                  "warmup_seconds": bench.get("warmup_seconds", 0.2), "min_seconds": bench.get("min_seconds", 0.5),
                  "rounds": bench.get("rounds", 3)},
        "params": host.get("params"), "macs": host.get("macs"),
        "host": {"top1": (host.get("accuracy") or {}).get("top1"), "backend": host.get("backend")},
        # below this agreement with the host's predictions on the val sample, the device does not switch to it
        "min_agreement": device_agreement((pipeline.get("gates") or {}).get("min_engine_agreement"), choice.precision),
        "source": run_source(run_dir, record),
    }
    return seal_bundle(staging, manifest, out_root)


def stage_files(out_root: Path, choice: Choice, extra_runner_files: tuple[str, ...] = ()) -> Path:
    """A staging folder under `out_root` with the artifact's files and the device runner's."""
    staging = out_root / f".staging-{time.time_ns()}"
    staging.mkdir(parents=True)
    for name, source in choice.files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, staging / name)
    for name in (*RUNNER_FILES, *extra_runner_files):  # the host's sessions and harness too: run and timed alike
        shutil.copyfile(RUNNER_DIR / name, staging / name)
    return staging


def manifest_head(choice: Choice) -> dict[str, Any]:
    return {"format": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": choice.model,
            "artifact": choice.name, "runtime": choice.runtime, "precision": choice.precision}


def run_source(run_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The run a bundle comes from and its stage keys: a release on a device is traced back by them."""
    return {"run_dir": str(run_dir), "name": record.get("name"),
            "stage_keys": {k: v.get("key") for k, v in record["stages"].items()}}


def seal_bundle(staging: Path, manifest: dict[str, Any], out_root: Path) -> Bundle:
    """The sha256 of every staged file into `manifest`, a version from the time and those sums, manifest.json
    written, and the folder renamed to the version: a bundle is complete or absent."""
    manifest["files"] = {str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*"))
                         if p.is_file()}
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time_ns() // 1_000_000 % 1000:03d}Z"
    manifest["version"] = f"{stamp}-{sha256_json(manifest['files'])[:8]}"
    write_json(staging / "manifest.json", manifest)
    (staging / "manifest.json").chmod(0o644)
    final = out_root / manifest["version"]
    staging.rename(final)
    return Bundle(final, manifest)
