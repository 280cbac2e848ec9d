"""A detector's release on the device: the box check before the switch, its latency, and `infer` on image files.

Travels in a detector's bundle beside runner.py, which loads it from the release folder for `smoke`, `bench` and
`infer` when the release's manifest carries detection settings (`detection`): the image size, the decode and NMS
settings (`post`), the class names, the shipped sample images (files under sample/) with the host's boxes for
them from the same engine (sample/host_boxes.json), and the share of those boxes the device must find again. An
image goes the way it went on the host: the file decoded by Pillow, letterboxed, the engine's raw predictions
[1, A, 4 + C], decoded and suppressed by detection.py's numpy code, so host and device differ only in the engine's
arithmetic. Torch-free, Python 3.8: numpy, Pillow and the release's runtime (onnxruntime or openvino).

  smoke  the sample images from their files, matched against the host's boxes (same class, IoU >= 0.9); below
         the bundle's agreement it fails, so the deploy stops before `current` is switched
  bench  the same check, then the model's latency at batch 1 (the host's harness) and the median time from an
         image file to its boxes
  infer  image files -> one JSON record per file (detection_record); `--out DIR` also writes each image with its
         boxes drawn, `--threshold T` keeps only boxes scoring at least T
"""

from __future__ import annotations

import json
import time
from pathlib import Path

try:  # on the host: the deploy.runner package
    from . import detection, harness, inference, preprocess, releases, runner
except ImportError:  # on the device: loaded by runner.py from the release folder
    import detection
    import harness
    import inference
    import preprocess
    import releases
    import runner

MATCH_IOU = 0.9  # a device box matches a host box of the same class that it overlaps by at least this much


def settings_of(manifest: dict) -> dict:
    settings = manifest.get("detection")
    if not isinstance(settings, dict):
        raise runner.RunnerError("this release is not a detector's (its manifest.json has no detection settings)")
    return settings


def detect_file(session, path, settings: dict, score_threshold=None):
    """(the image as Pillow decoded it, its detections): the file letterboxed, run, decoded and suppressed."""
    image = preprocess.open_image(path, "RGB")
    array, scale = detection.letterbox(image, int(settings["image_size"]))
    predictions = session.infer(array[None])
    post = settings["post"]
    threshold = post["score_threshold"] if score_threshold is None else score_threshold
    found = detection.postprocess(predictions, [scale], [image.size], float(threshold), float(post["iou_threshold"]),
                                  int(post["max_detections"]), int(post["pre_nms_top_k"]))[0]
    return image, found


def match_count(host: dict, device: dict, iou: float = MATCH_IOU) -> int:
    """How many host boxes the device found again: each host box, by score, takes the unmatched device box of its
    class that overlaps it most, if by IoU >= `iou` (the rule of the host's engine parity)."""
    import numpy as np

    host_boxes = np.asarray(host["boxes"], dtype=np.float64).reshape(-1, 4)
    device_boxes = np.asarray(device["boxes"], dtype=np.float64).reshape(-1, 4)
    if not len(host_boxes) or not len(device_boxes):
        return 0
    overlaps = detection.box_iou(host_boxes, device_boxes)
    same_class = np.asarray(host["labels"]).reshape(-1, 1) == np.asarray(device["labels"]).reshape(1, -1)
    overlaps = np.where(same_class, overlaps, -1.0)
    taken = np.zeros(len(device_boxes), dtype=bool)
    matched = 0
    for row in np.argsort(-np.asarray(host["scores"], dtype=np.float64), kind="stable"):
        candidates = np.where(taken, -1.0, overlaps[row])
        best = int(candidates.argmax())
        if candidates[best] >= iou:
            taken[best] = True
            matched += 1
    return matched


def host_boxes(release: Path, settings: dict) -> list:
    """The host's detections of the shipped sample images: [{"file", "boxes", "scores", "labels"}], in order."""
    sample = settings["sample"]
    try:
        images = json.loads((release / sample["host_boxes"]).read_text())["images"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise runner.RunnerError(f"{sample['host_boxes']}: not the host's boxes ({error})") from None
    if [entry.get("file") for entry in images] != list(sample["images"]):
        raise runner.RunnerError(f"{sample['host_boxes']}: its images are not the manifest's sample images")
    return images


def box_check(release: Path, settings: dict, session) -> dict:
    """The sample images detected here and matched against the host's boxes: the share of boxes found again,
    over the larger of the two counts (a box the device adds counts against it as one it misses)."""
    matched = host_total = device_total = identical = 0
    for expected in host_boxes(release, settings):
        _, found = detect_file(session, release / expected["file"], settings)
        count = match_count(expected, found, float(settings.get("match_iou", MATCH_IOU)))
        matched += count
        host_total += len(expected["scores"])
        device_total += len(found["scores"])
        identical += count == len(expected["scores"]) == len(found["scores"])
    most = max(host_total, device_total)
    return {"agreement": round(matched / most, 6) if most else 1.0, "matched": matched, "host_boxes": host_total,
            "device_boxes": device_total, "identical_images": identical, "images": len(settings["sample"]["images"]),
            "min_agreement": float(settings["min_box_agreement"]), "agreement_from": settings.get("agreement_from")}


def require_agreement(check: dict) -> None:
    """Refuse, in one line, a device whose boxes agree with the host's less than the bundle asks."""
    if check["agreement"] + 1e-9 >= check["min_agreement"]:
        return
    why = f" ({check['agreement_from']})" if check.get("agreement_from") else ""
    raise runner.RunnerError(
        f"boxes on the device agree with the host's on {check['agreement']:.2%} ({check['matched']} of "
        f"{max(check['host_boxes'], check['device_boxes'])} boxes matched, {check['identical_images']}/"
        f"{check['images']} sample images identical), below the {check['min_agreement']:.2%} this bundle "
        f"requires{why}")


def checked_session(release: Path, manifest: dict, threads=None):
    """(the release's engine, opened as the host measured it, and its box check, passed)."""
    settings = settings_of(manifest)
    session = inference.open_release(release, manifest, threads)
    try:
        check = box_check(release, settings, session)
        require_agreement(check)
    except BaseException:
        session.close()
        raise
    return session, check


def smoke(release: Path, threads=None) -> dict:
    """The box check: what the deploy runs before it switches `current` to this release."""
    manifest = releases.read_manifest(release)
    session, check = checked_session(release, manifest, threads)
    with session:
        return {"smoke": "ok", "providers": session.providers, "detection": check}


def file_to_boxes_ms(session, release: Path, settings: dict, rounds: int) -> dict:
    """Median ms from an image file to its boxes, one sample image at a time, `rounds` passes after one warm-up."""
    import numpy as np

    files = [release / name for name in settings["sample"]["images"]]
    detect_file(session, files[0], settings)
    times = []
    for _ in range(rounds):
        for path in files:
            started = time.perf_counter()
            detect_file(session, path, settings)
            times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(float(np.median(times)), 3), "images": len(times)}


def engine_mb(release: Path, manifest: dict) -> float:
    folder = release / manifest.get("model_folder", "model")
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 4)


def bench(release: Path, threads=None, rounds=None) -> dict:
    """The box check again, then the model at batch 1 in rounds of fresh loads (the host's harness) and the time
    from a file to its boxes: one row."""
    manifest = releases.read_manifest(release)
    settings = settings_of(manifest)
    rounds = rounds or int(settings.get("rounds", 3))
    session, check = checked_session(release, manifest, threads)
    with session:
        providers = session.providers
        end_to_end = file_to_boxes_ms(session, release, settings, rounds)
    size = int(settings["image_size"])
    ((timing,),) = harness.measure_rounds([lambda: inference.open_release(release, manifest, threads)],
                                          (3, size, size), [1], harness.LatencySettings(), rounds)
    row = {"model": manifest.get("model"), "artifact": manifest["artifact"], "backend": manifest["runtime"],
           "precision": manifest["precision"], **timing, "timer": "runner", "end_to_end": end_to_end,
           "size_mb": engine_mb(release, manifest), "providers": providers,
           "agreement_on": f"the boxes of {check['images']} sample images",
           "accuracy": {"agreement_with_host": check["agreement"], "matched": check["matched"],
                        "host_boxes": check["host_boxes"], "device_boxes": check["device_boxes"],
                        "images": check["images"], "min_agreement": check["min_agreement"]}}
    runner.log(f"boxes agree with the host's on {check['agreement']:.2%} of {check['images']} sample images; "
               f"b1 p50 {timing['latency_ms']['p50']:.3f} ms, {end_to_end['p50_ms']:.2f} ms file to boxes")
    return {"rows": [row], "detection": check}


def drawn_path(out_dir: Path, path: Path, taken: set) -> Path:
    """Where an image with its boxes is written: its own name as .png, numbered when two inputs share a name."""
    name, number = f"{path.stem}.png", 1
    while name in taken:
        number += 1
        name = f"{path.stem}-{number}.png"
    taken.add(name)
    return out_dir / name


def infer(release: Path, files: list, out_dir=None, threshold=None) -> list:
    """`runner.py infer RELEASE a.jpg b.png [--out DIR] [--threshold T]`: one detection_record per file, in order."""
    manifest = releases.read_manifest(release)
    settings = settings_of(manifest)
    if threshold is not None and not 0 <= threshold <= 1:
        raise runner.RunnerError(f"--threshold {threshold}: a score between 0 and 1")
    for path in files:  # every input checked before anything is run or written
        if not preprocess.is_image(path):
            raise runner.RunnerError(f"{path}: not an image file ({' '.join(preprocess.IMAGE_SUFFIXES)}): a "
                                     "detector's release takes image files")
        if not Path(path).is_file():
            raise runner.RunnerError(f"{path}: not found")
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    names, taken, answers = settings["class_names"], set(), []
    with inference.open_release(release, manifest) as session:
        for path in files:
            image, found = detect_file(session, path, settings, threshold)
            record = detection.detection_record(path, found, names)
            if out_dir is not None:
                target = drawn_path(out_dir, Path(path), taken)
                detection.draw_detections(image, found, names).save(target)
                record["drawn"] = str(target)
            answers.append(record)
    return answers
