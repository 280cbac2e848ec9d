"""A causal LM's deploy bundle: an engine folder, the device runner and the generation settings.

What `compress deploy` and a causal LM's deploy stage ship through the same steps as every other bundle
(checksums, upload, verify, smoke, bench, atomic switch; deploy/release.py). The artifact is one of the
build stage's engine folders (default: the report's recommended one), copied whole under `model/`
(genai_config.json, model.onnx and its .data, tokenizer.json; or an OpenVINO IR folder; or, for `--runtime
tensorrt`, the student's Hugging Face folder and tensorrt_llm.json, from which the device builds a TensorRT-LLM
engine into the release's `engine/` before checking it). Its manifest's `generation` settings are
what the device checks itself against before `current` is switched to it (deploy/runner/lm_device.py):

- `prompts`: the token ids of the export stage's held-out prompts, and `max_new_tokens` (default: the
  export's new_tokens, the length build measured its agreement with torch at);
- `host_tokens`: this machine's greedy tokens for them from the same engine folder (GreedyGenerator); for a
  TensorRT-LLM folder, whose engine only the device builds, torch's fp32 tokens recorded by the export stage;
- `min_agreement`: the share of positions the device's tokens must agree on: 1.0 for an fp32 folder
  (identical tokens), else the deploy section's `min_agreement`, else the build's measured agreement of that
  engine with torch less `agreement_margin`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from compress.core.errors import UsageError
from compress.core.fileio import read_json
from deploy.bundle import Bundle, Choice, Packer, manifest_head, run_source, seal_bundle, stage_files
from deploy.runner import GENERATION_FILES
from deploy.runner.generation import GenerationError, read_genai_config
from deploy.runner.ov_generation import open_generator

MODEL_FOLDER = "model"  # where the engine folder lies in the bundle (and the release)
RUNTIME = "onnxruntime"
# an onnxruntime-genai folder, an OpenVINO IR folder (openvino-genai), a Hugging Face folder TensorRT-LLM builds from
RUNTIMES = ("onnxruntime", "openvino", "tensorrt")
TENSORRT_SETTINGS = "tensorrt_llm.json"  # compress/stages/lm/tensorrt_llm_prep.py's build settings, beside the weights
ENGINE_FOLDER = "engine"  # where the device saves the TensorRT-LLM engine it builds, in the release


@dataclass
class GenerationSettings:
    """A causal LM deploy's own options (stages.deploy of a causal-lm pipeline; the run's for `compress deploy`)."""

    max_new_tokens: int | None = None  # None: the export's new_tokens
    min_agreement: float | None = None  # int8/int4 only; None: build's agreement with torch less the margin
    agreement_margin: float = 0.05
    rounds: int = 3  # timing rounds of time_generation on the device
    where: str = "stages.deploy"  # where the options were set, named in refusals


def engines_of(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The build stage's engine folders by name (a causal LM's build records a mapping)."""
    engines = record["stages"]["build"].get("outputs", {}).get("engines") or {}
    return engines if isinstance(engines, dict) else {}


def runtime_of(folder: Path) -> str:
    if (folder / "openvino_model.xml").is_file():
        return "openvino"
    return "tensorrt" if (folder / TENSORRT_SETTINGS).is_file() else RUNTIME


def candidates(run_dir: Path, record: dict[str, Any]) -> list[Choice]:
    """Every engine folder of the run's build, as a deployable artifact (its files under model/)."""
    found = []
    for name, engine in engines_of(record).items():
        folder = run_dir / engine["folder"]
        files = {f"{MODEL_FOLDER}/{p.relative_to(folder)}": p for p in sorted(folder.rglob("*")) if p.is_file()}
        precision = engine.get("precision") or name.rsplit("-", 1)[-1]
        runtime = runtime_of(folder)
        found.append(Choice(name, name.split("-", 1)[0], runtime, precision, files, f"{MODEL_FOLDER}/model.onnx"))
    return found


def choose(run_dir: Path, record: dict[str, Any], runtime: str | None, artifact: str | None,
           default_runtime: str = RUNTIME) -> Choice:
    """`artifact`, else the report's recommended engine folder, else the fp32 one (of `runtime` when given; on a
    target whose default runtime is TensorRT, a jetson:, the TensorRT-LLM folder where the build made one)."""
    if runtime is not None and runtime not in RUNTIMES:
        raise UsageError(f"--runtime {runtime}: a causal LM ships an onnxruntime-genai folder (--runtime onnxruntime), "
                         "an OpenVINO IR folder (--runtime openvino) or a folder TensorRT-LLM builds an engine from on "
                         "the device (--runtime tensorrt)")
    found = candidates(run_dir, record)
    if runtime is not None:
        found = [c for c in found if c.runtime == runtime]
        if not found:
            raise UsageError(f"--runtime {runtime}: the build made no {runtime} engine (stages.build.targets)")
    names = ", ".join(c.name for c in found) or "none"
    if artifact is not None:
        match = [c for c in found if c.name == artifact]
        if not match:
            raise UsageError(f"--artifact: no artifact '{artifact}' in {run_dir / 'run.json'}; deployable: {names}")
        return match[0]
    if not found:
        raise UsageError(f"{run_dir / 'run.json'}: stages.build: no engine folder recorded (run the build stage)")
    if runtime is None and default_runtime == "tensorrt":  # a jetson: target, as for every task: TensorRT where built
        found = [c for c in found if c.runtime == "tensorrt"] or found
    recommended = record["stages"].get("report", {}).get("outputs", {}).get("recommended")
    preferred = [c for c in found if c.name == recommended] or [c for c in found if c.precision == "fp32"]
    return (preferred or found)[0]


def required_agreement(record: dict[str, Any], choice: Choice, settings: GenerationSettings,
                       run_json: Path) -> tuple[float, str]:
    """(the share of greedy positions the device must agree on, why that much)."""
    if choice.precision == "fp32":
        return 1.0, "identical tokens, as an fp32 folder must give"
    if settings.min_agreement is not None:
        return float(settings.min_agreement), f"{settings.where}.min_agreement"
    measured = (engines_of(record)[choice.name].get("parity") or {}).get("token_agreement")
    if measured is None:
        raise UsageError(f"{run_json}: stages.build.engines.{choice.name}.parity.token_agreement: not recorded (run the "
                         f"build stage again, or set {settings.where}.min_agreement)")
    floor = max(0.0, round(float(measured) - settings.agreement_margin, 6))
    return floor, (f"build's agreement with torch {float(measured):.2%} less the margin "
                   f"{settings.agreement_margin:.2%}")


def host_tokens(folder: Path, prompts: list[list[int]], max_new_tokens: int, where: str) -> tuple[list, str]:
    """This machine's greedy tokens for the prompts from the engine folder itself, and the backend that made them."""
    try:
        generator = open_generator(str(folder), backend="auto")
        return [generator.generate(prompt, max_new_tokens) for prompt in prompts], generator.backend
    except ValueError as error:  # a prompt and max_new_tokens over the model's context length
        raise UsageError(f"{where}.max_new_tokens: {error}") from None
    except GenerationError as error:
        raise UsageError(f"{folder}: {error}") from None


def reference_tokens(run_dir: Path, record: dict[str, Any], run_json: Path) -> list[list[int]]:
    """Torch's fp32 greedy tokens of the student for the export's prompts (what its fp32 folders decode exactly)."""
    exported = record["stages"]["export"]["outputs"].get("engines", {}).get("student-onnxruntime-fp32") or {}
    path = run_dir / exported.get("reference", "missing")
    if not path.is_file():
        raise UsageError(f"{run_json}: stages.export.engines.student-onnxruntime-fp32.reference: {path} is missing "
                         "(run the export stage again)")
    with np.load(path) as saved:
        count = len([key for key in saved.files if key.startswith("tokens_")])
        return [[int(t) for t in saved[f"tokens_{i}"]] for i in range(count)]


def host_row(run_dir: Path, record: dict[str, Any], name: str) -> dict[str, Any]:
    """What the benchmark stage measured of this engine on the host (perplexity, tokens/s)."""
    results = record["stages"].get("benchmark", {}).get("outputs", {}).get("results")
    if not results or not (run_dir / results).is_file():
        return {}
    row = next((r for r in read_json(run_dir / results).get("rows", []) if r.get("artifact") == name), {})
    return {key: row.get(key) for key in ("backend", "perplexity", "decode_tokens_per_s", "ttft_s", "size_mb")}


def make_bundle(run_dir: Path, choice: Choice, out_root: Path, settings: GenerationSettings) -> Bundle:
    run_dir = Path(run_dir).resolve()
    run_json = run_dir / "run.json"
    record = read_json(run_json)
    prompts = record["stages"].get("export", {}).get("outputs", {}).get("prompts")
    if not prompts:
        raise UsageError(f"{run_json}: stages.export.prompts: no prompts recorded (run the export stage again)")
    folder = run_dir / engines_of(record)[choice.name]["folder"]
    runtime = runtime_of(folder)
    if runtime == RUNTIME and not (folder / "genai_config.json").is_file():
        raise UsageError(f"{folder}: no genai_config.json, openvino_model.xml nor {TENSORRT_SETTINGS} (run the build "
                         "stage again)")
    if not (folder / "tokenizer.json").is_file():
        raise UsageError(f"{folder}: no tokenizer.json: the device could not turn prompts into tokens")
    pipeline = yaml.safe_load((run_dir / "pipeline.yaml").read_text()) or {}
    export = (pipeline.get("stages") or {}).get("export") or {}
    max_new_tokens = int(settings.max_new_tokens or export.get("new_tokens") or 16)
    minimum, why = required_agreement(record, choice, settings, run_json)
    engine = None
    if runtime == "tensorrt":  # built on the device: its tokens are held to torch's fp32 ones, the export's
        recorded = int(export.get("new_tokens") or 16)
        if max_new_tokens > recorded:
            raise UsageError(f"{settings.where}.max_new_tokens: {max_new_tokens}: torch's tokens, which the device's are "
                             f"held to, were recorded for {recorded} (stages.export.new_tokens)")
        tokens, backend = [t[:max_new_tokens] for t in reference_tokens(run_dir, record, run_json)], "torch"
        engine = {"builder": "tensorrt_llm", "folder": ENGINE_FOLDER,
                  "settings": read_json(folder / TENSORRT_SETTINGS)}
        model_file = "config.json"
    else:
        tokens, backend = host_tokens(folder, prompts, max_new_tokens, settings.where)
        model_file = "openvino_model.xml" if runtime == "openvino" else \
            read_genai_config(folder)["model"]["decoder"].get("filename", "model.onnx")
    choice.model_file = f"{MODEL_FOLDER}/{model_file}"
    staging = stage_files(out_root, choice, GENERATION_FILES)
    manifest = {
        **manifest_head(choice),
        **({"task": pipeline["task"]} if pipeline.get("task") else {}),
        "model_file": choice.model_file, "model_folder": MODEL_FOLDER, "engine": engine,
        "generation": {"max_new_tokens": max_new_tokens, "prompts": prompts, "host_tokens": tokens,
                       "host_backend": backend, "min_agreement": minimum, "agreement_from": why,
                       "rounds": settings.rounds},
        # what refuse_disagreement holds the device's measured agreement to, as for every bundle
        "min_agreement": minimum,
        "host": host_row(run_dir, record, choice.name),
        "source": run_source(run_dir, record),
    }
    return seal_bundle(staging, manifest, out_root)


def packer(settings: GenerationSettings | None = None) -> Packer:
    """How a causal LM's run is deployed: its engine folder and generation settings; the device needs a tokenizer."""
    settings = settings or GenerationSettings()
    return Packer(choose, lambda run_dir, choice, out_root: make_bundle(run_dir, choice, out_root, settings),
                  generation=True)
