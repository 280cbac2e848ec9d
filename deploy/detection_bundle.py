"""A detector's deploy bundle: one built engine, the device runner with its detection steps, and a checked sample.

What `compress deploy` and a detector's deploy stage ship through the same steps as every other bundle
(checksums, upload, verify, smoke, bench, atomic switch; deploy/release.py). The artifact is one of the build
stage's engine folders, named as its folder is, `model.backend.precision` (student.openvino.int8; default: the
report's recommended engine), copied whole under `model/` (model.onnx, or model.xml and model.bin, and
engine.json). Its manifest's `detection` settings are what the device runs and checks itself with before
`current` is switched to it (deploy/runner/detection_device.py):

- `image_size`, `post` (score and NMS thresholds, max_detections, pre_nms_top_k): the export's, which every
  engine was scored with; `class_names` and `category_ids`: the teacher stage's;
- `sample`: the evaluation split's first `sample_images` images, copied as files under sample/, and this
  machine's boxes for them from the same engine folder (sample/host_boxes.json), computed by the device's own
  code (detection_device.detect_file: letterbox, the engine through deploy.runner.sessions, decode and NMS);
- `min_box_agreement`: the share of those boxes the device must find again (same class, IoU >= 0.9): the deploy
  section's `min_box_agreement`, else 0.99 for an fp32 engine (another CPU may move a box near a threshold),
  else build's measured box agreement of that engine with torch less `agreement_margin`.

Which images make the sample is the compress side's to say (`SampleImages`): this package reads no dataset.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from compress.core.errors import UsageError
from compress.core.fileio import read_json
from deploy.bundle import Bundle, Choice, Packer, manifest_head, run_source, seal_bundle, stage_files
from deploy.runner import DETECTION_FILES, detection_device
from deploy.runner.runner import RunnerError
from deploy.runner.sessions import SessionError, open_model

MODEL_FOLDER = "model"  # where the engine folder lies in the bundle (and the release)
SAMPLE_FOLDER = "sample"
HOST_BOXES = f"{SAMPLE_FOLDER}/host_boxes.json"
RUNTIMES = ("onnxruntime", "openvino")  # a detector's engines are built by stages.build; TensorRT is not among them
FP32_AGREEMENT = 0.99

# (run dir, at most this many) -> (the split's name, its first images' files): the held-out images a bundle ships.
SampleImages = Callable[[Path, int], tuple[str, list[Path]]]


@dataclass
class DetectionSettings:
    """A detector deploy's own options (stages.deploy of an object-detection pipeline; the run's for `compress
    deploy`)."""

    sample_images: int = 8
    min_box_agreement: float | None = None  # None: 0.99 for fp32, build's box agreement less the margin otherwise
    agreement_margin: float = 0.05
    rounds: int = 3  # timing rounds on the device
    where: str = "stages.deploy"  # where the options were set, named in refusals


def engine_name(engine: dict[str, Any]) -> str:
    return f"{engine['model']}.{engine['backend']}.{engine['precision']}"


def built_engines(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The build stage's engine folders by name (the TensorRT ones are deferred to a device, not built)."""
    engines = record["stages"]["build"].get("outputs", {}).get("engines") or []
    return {engine_name(e): e for e in engines if isinstance(e, dict) and e.get("status") == "built"}


def recommended_name(record: dict[str, Any]) -> str | None:
    """The report's recommendation ("student openvino:int8") as an artifact name (student.openvino.int8)."""
    said = record["stages"].get("report", {}).get("outputs", {}).get("recommended")
    return said.replace(" ", ".").replace(":", ".") if isinstance(said, str) else None


def candidates(run_dir: Path, record: dict[str, Any]) -> list[Choice]:
    """Every built engine folder of the run, as a deployable artifact (its files under model/)."""
    found = []
    for name, engine in built_engines(record).items():
        folder = run_dir / engine["folder"]
        files = {f"{MODEL_FOLDER}/{p.relative_to(folder)}": p for p in sorted(folder.rglob("*")) if p.is_file()}
        model_file = f"{MODEL_FOLDER}/{Path(engine['artifact']).name}"
        found.append(Choice(name, engine["model"], engine["backend"], engine["precision"], files, model_file))
    return found


def choose(run_dir: Path, record: dict[str, Any], runtime: str | None, artifact: str | None,
           default_runtime: str = "onnxruntime") -> Choice:
    """`artifact`, else the report's recommended engine (of `runtime` when given), else the student's fp32 one.

    A target's default runtime (tensorrt for jetson://) does not choose: a detector ships an engine built here."""
    if runtime is not None and runtime not in RUNTIMES:
        raise UsageError(f"--runtime {runtime}: a detector ships an engine built by stages.build, which runs on "
                         f"{' or '.join(RUNTIMES)}")
    found = candidates(run_dir, record)
    names = ", ".join(c.name for c in found) or "none"
    if artifact is not None:
        match = [c for c in found if c.name == artifact]
        if not match:
            raise UsageError(f"--artifact: no artifact '{artifact}' in {run_dir / 'run.json'}; deployable: {names}")
        if runtime is not None and match[0].runtime != runtime:
            raise UsageError(f"--artifact {artifact} runs on {match[0].runtime}, not --runtime {runtime}")
        return match[0]
    if runtime is not None:
        found = [c for c in found if c.runtime == runtime]
        if not found:
            raise UsageError(f"--runtime {runtime}: {run_dir / 'run.json'} has no {runtime} engine (deployable: "
                             f"{names})")
    if not found:
        raise UsageError(f"{run_dir / 'run.json'}: stages.build: no engine built (run the build stage)")
    recommended = recommended_name(record)
    students = [c for c in found if c.model == "student"]
    preferred = ([c for c in found if c.name == recommended] or [c for c in students if c.precision == "fp32"]
                 or students)
    return (preferred or found)[0]


def required_agreement(record: dict[str, Any], choice: Choice, settings: DetectionSettings,
                       run_json: Path) -> tuple[float, str]:
    """(the share of the host's sample boxes the device must find again, why that much)."""
    if settings.min_box_agreement is not None:
        return float(settings.min_box_agreement), f"{settings.where}.min_box_agreement"
    if choice.precision == "fp32":
        return FP32_AGREEMENT, "an fp32 engine's boxes, less what another CPU may move across a threshold"
    measured = (built_engines(record)[choice.name].get("parity") or {}).get("agreement")
    if measured is None:
        raise UsageError(f"{run_json}: stages.build.engines: {choice.name}: parity.agreement not recorded (run the "
                         f"build stage again, or set {settings.where}.min_box_agreement)")
    floor = max(0.0, round(float(measured) - settings.agreement_margin, 6))
    return floor, (f"build's box agreement with torch {float(measured):.2%} less the margin "
                   f"{settings.agreement_margin:.2%}")


def detection_settings(record: dict[str, Any], run_json: Path) -> dict[str, Any]:
    """What the device decodes with and names boxes by: the export's image size and post settings, the classes."""
    export = record["stages"].get("export", {}).get("outputs", {})
    teacher = record["stages"].get("teacher", {}).get("outputs", {})
    if not export.get("image_size") or not isinstance(export.get("post"), dict):
        raise UsageError(f"{run_json}: stages.export: no image_size and post settings recorded (run the export "
                         "stage again)")
    if not teacher.get("class_names"):
        raise UsageError(f"{run_json}: stages.teacher.class_names: not recorded (run the teacher stage again)")
    return {"image_size": int(export["image_size"]), "post": dict(export["post"]),
            "class_names": list(teacher["class_names"]), "category_ids": list(teacher.get("category_ids") or [])}


def sample_names(files: list[Path]) -> list[str]:
    """Where the sample images lie in the bundle: sample/000-name.ext, ..., in order (two files of one name differ)."""
    return [f"{SAMPLE_FOLDER}/{index:03d}-{path.name}" for index, path in enumerate(files)]


def host_boxes(run_dir: Path, choice: Choice, settings: dict[str, Any], files: list[Path],
               names: list[str]) -> dict[str, Any]:
    """This machine's detections of the sample images from the engine folder, by the device's own code."""
    try:
        session = open_model(choice.files[choice.model_file], choice.runtime, precision=choice.precision)
    except (SessionError, RuntimeError, ImportError) as error:
        raise UsageError(f"{run_dir / 'run.json'}: {choice.name}: its engine does not load here: {error}") from None
    images = []
    with session:
        for path, name in zip(files, names):
            try:
                _, found = detection_device.detect_file(session, path, settings)
            except RunnerError as error:
                raise UsageError(str(error)) from None
            images.append({"file": name, "boxes": found["boxes"].tolist(), "scores": found["scores"].tolist(),
                           "labels": found["labels"].tolist()})
    return {"artifact": choice.name, "runtime": choice.runtime, "providers": list(session.providers),
            "images": images}


def host_row(run_dir: Path, record: dict[str, Any], choice: Choice) -> dict[str, Any]:
    """What the benchmark stage measured of this engine on the host (mAP, latency, file to boxes)."""
    results = record["stages"].get("benchmark", {}).get("outputs", {}).get("results")
    if not results or not (run_dir / results).is_file():
        return {}
    row = next((r for r in read_json(run_dir / results).get("rows", []) if engine_name(r) == choice.name), {})
    return {"map": (row.get("accuracy") or {}).get("map"), "box_agreement": row.get("box_agreement"),
            "b1_p50_ms": (row.get("latency") or {}).get("1", {}).get("p50_ms"),
            "file_to_boxes_p50_ms": (row.get("end_to_end") or {}).get("p50_ms"), "size_mb": row.get("size_mb")}


def make_bundle(run_dir: Path, choice: Choice, out_root: Path, settings: DetectionSettings,
                sample_images: SampleImages) -> Bundle:
    run_dir = Path(run_dir).resolve()
    run_json = run_dir / "run.json"
    record = read_json(run_json)
    detection = detection_settings(record, run_json)
    minimum, why = required_agreement(record, choice, settings, run_json)
    split, files = sample_images(run_dir, settings.sample_images)
    if not files:
        raise UsageError(f"{run_dir / 'pipeline.yaml'}: data: the {split} split has no image to check a device with")
    names = sample_names(files)
    boxes = host_boxes(run_dir, choice, detection, files, names)
    staging = stage_files(out_root, choice, DETECTION_FILES)
    (staging / SAMPLE_FOLDER).mkdir()
    for path, name in zip(files, names):
        shutil.copyfile(path, staging / name)
    (staging / HOST_BOXES).write_text(json.dumps(boxes))
    manifest = {
        **manifest_head(choice), "task": "object-detection",
        "model_file": choice.model_file, "model_folder": MODEL_FOLDER, "engine": None,
        "input": {"name": "images", "shape": [-1, 3, detection["image_size"], detection["image_size"]],
                  "dtype": "float32"},
        "detection": {**detection, "sample": {"split": split, "images": names, "host_boxes": HOST_BOXES},
                      "match_iou": detection_device.MATCH_IOU, "min_box_agreement": minimum, "agreement_from": why,
                      "rounds": settings.rounds},
        # what refuse_disagreement holds the device's measured agreement to, as for every bundle
        "min_agreement": minimum,
        "host": host_row(run_dir, record, choice),
        "source": run_source(run_dir, record),
    }
    return seal_bundle(staging, manifest, out_root)


def packer(sample_images: SampleImages, settings: DetectionSettings | None = None) -> Packer:
    """How a detector's run is deployed: a built engine folder, the detection steps and a checked sample."""
    settings = settings or DetectionSettings()
    return Packer(choose, lambda run_dir, choice, out_root: make_bundle(run_dir, choice, out_root, settings,
                                                                        sample_images))
