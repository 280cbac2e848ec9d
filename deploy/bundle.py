"""A deploy bundle: the chosen artifact, a labelled val sample, the runner and manifest.json.

The manifest holds the sha256 of every file (checked on the device before anything runs), the
input name/shape/dtype, preprocessing, labels, and the source run and its stage keys, so a
release on a device can always be traced back to the run that made it. For TensorRT the bundle
carries the ONNX and `build_engine.sh`; the engine itself is built on the device.
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
from deploy.engines.trtexec import build_script
from deploy.runner import RUNNER_DIR, RUNNER_FILES

RUNTIMES = ("onnxruntime", "openvino", "tensorrt")
VAL_SAMPLE = "val_sample.npz"


@dataclass
class Choice:
    """One deployable artifact: what runs on the device and where its files come from."""

    name: str  # model.backend.precision
    model: str
    runtime: str
    precision: str
    files: dict[str, Path]  # bundle name -> source file
    model_file: str


@dataclass
class ValSample:
    """What the device scores itself on: preprocessed, labelled val inputs with the host's top-1.

    Made by whoever knows the run's data (the compress side: its data sources and splits), so the
    deploy package never reads a dataset itself.
    """

    arrays: dict[str, np.ndarray]  # x (preprocessed), y, host_top1
    preprocessing: dict[str, Any]  # what the device applies to raw inputs
    labels: list[str]


# (run dir, the run's fp32 ONNX, at most this many samples) -> the val sample of the bundle.
SampleMaker = Callable[[Path, Path, int], ValSample]


@dataclass
class Bundle:
    directory: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return self.manifest["version"]


def read_run(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    if not path.is_file():
        raise UsageError(f"{path}: not found (is {run_dir} a run dir of `compress run`?)")
    record = read_json(path)
    build = record.get("stages", {}).get("build", {})
    if build.get("status") != "done":
        raise UsageError(f"{path}: stages.build: no finished build stage (run the pipeline with a build section first)")
    return record


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
                            engine["backend"], engine["precision"], files, Path(engine["artifact"]).name))
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


def onnx_input(path: Path) -> dict[str, Any]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    first = next(i for i in graph.input if i.name not in initializers)
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in first.type.tensor_type.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(first.type.tensor_type.elem_type).name
    return {"name": first.name, "shape": dims, "dtype": dtype}


def host_row(run_dir: Path, record: dict[str, Any], choice: Choice) -> dict[str, Any]:
    results = record["stages"].get("benchmark", {}).get("outputs", {}).get("results")
    if not results or not (run_dir / results).is_file():
        return {}
    rows = read_json(run_dir / results)["rows"]
    same = [r for r in rows if f"{r['model']}.{r['backend']}.{r['precision']}" == choice.name]
    torch_row = [r for r in rows if r["model"] == choice.model and r["backend"] == "torch"]
    return (same or torch_row or [{}])[0]


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
    staging = out_root / f".staging-{time.time_ns()}"
    staging.mkdir(parents=True)
    for name, source in choice.files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, staging / name)
    for name in RUNNER_FILES:  # the host's sessions and harness too, so the device runs and is timed alike
        shutil.copyfile(RUNNER_DIR / name, staging / name)
    np.savez_compressed(staging / VAL_SAMPLE, **sample)
    model_input = onnx_input(run_dir / export["onnx"])
    batch_sizes = bench.get("batch_sizes") or [1]
    engine = None
    if choice.runtime == "tensorrt":
        chw = list(sample["x"].shape[1:])  # the data's shape, also where the ONNX leaves H/W dynamic
        shapes = [(b, *chw) for b in (1, batch_sizes[0], max(batch_sizes))]
        write_text(staging / "build_engine.sh",
                   build_script("model.onnx", "model.engine", choice.precision, *shapes, model_input["name"]))
        (staging / "build_engine.sh").chmod(0o755)
        engine = {"script": "build_engine.sh", "file": "model.engine", "builder": "trtexec",
                  "min_shape": shapes[0], "opt_shape": shapes[1], "max_shape": shapes[2]}
    host = host_row(run_dir, record, choice)
    manifest = {
        "format": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": choice.model, "artifact": choice.name, "runtime": choice.runtime, "precision": choice.precision,
        "model_file": choice.model_file, "engine": engine,
        "input": {**model_input, "shape": [-1, *model_input["shape"][1:]]},
        "preprocessing": val.preprocessing, "labels": list(val.labels),
        "val_sample": VAL_SAMPLE,
        "bench": {"batch_sizes": batch_sizes, "runs": bench.get("runs", 30), "warmup": bench.get("warmup", 5),
                  "warmup_seconds": bench.get("warmup_seconds", 0.2), "min_seconds": bench.get("min_seconds", 0.5),
                  "rounds": bench.get("rounds", 3)},
        "params": host.get("params"), "macs": host.get("macs"),
        "host": {"top1": (host.get("accuracy") or {}).get("top1"), "backend": host.get("backend")},
        "source": {"run_dir": str(run_dir), "name": record.get("name"),
                   "stage_keys": {k: v.get("key") for k, v in record["stages"].items()}},
        "files": {str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()},
    }
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time_ns() // 1_000_000 % 1000:03d}Z"
    manifest["version"] = f"{stamp}-{sha256_json(manifest['files'])[:8]}"
    write_json(staging / "manifest.json", manifest)
    (staging / "manifest.json").chmod(0o644)
    final = out_root / manifest["version"]
    staging.rename(final)
    return Bundle(final, manifest)
