"""The YOLO layout (Ultralytics) as detection records: root/images/<split>/... and root/labels/<split>/<name>.txt.

Each label line is `class cx cy w h`, normalized to [0, 1]; an image without a label file, or with an empty one,
is background. Image sizes come from the file headers, so no pixel is decoded here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.errors import ConfigError
from compress.data.records import IMAGE_SUFFIXES, decode_errors
from compress.tasks.object_detection.detection_records import (BOX_SLACK_NORM, SPLITS, DetectionSet, _is_int, _record,
                                                                 _sample)


def yolo_splits(root: Path) -> list[str]:
    """The split folders under root/images, in train/val/test order; [] for a flat folder of images."""
    return [split for split in SPLITS if (Path(root) / "images" / split).is_dir()]


def read_yolo(root: Path, split: str | None, names: list[str] | None, config_file: str) -> DetectionSet:
    """The Ultralytics layout: root/images/<split>/... with root/labels/<split>/<same path>.txt of
    `class cx cy w h` lines normalized to [0, 1]; a missing or empty label file is a background image.

    Class names: `names` (the config) first, else root/data.yaml, else root/classes.txt.
    """
    root = Path(root)
    images_dir = root / "images" / split if split else root / "images"
    labels_dir = root / "labels" / split if split else root / "labels"
    class_names = names if names is not None else _yolo_names(root, config_file)
    files = _image_files(images_dir, config_file)
    records = []
    for image_id, path in enumerate(files, start=1):
        width, height = _header_size(path)
        label_file = (labels_dir / path.relative_to(images_dir)).with_suffix(".txt")
        boxes, labels = _yolo_labels(label_file, width, height, len(class_names)) if label_file.is_file() else ([], [])
        records.append(_record(image_id, path, width, height, boxes, labels))
    return DetectionSet(records, list(class_names), list(range(len(class_names))))


def _image_files(folder: Path, config_file: str) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(config_file, "data.path", f"{folder}: no such folder (a YOLO data set has images/ and "
                                                    "labels/, optionally with train/ val/ test/ inside)")
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(folder).parts))
    if not files:
        raise ConfigError(config_file, "data.path", f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header; Pillow reads the pixels only on load(), which this never calls."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except decode_errors() as error:
        raise ConfigError(str(path), "", f"not a readable image ({error})") from None


def _yolo_names(root: Path, config_file: str) -> list[str]:
    data_yaml, classes_txt = root / "data.yaml", root / "classes.txt"
    if data_yaml.is_file():
        names = _names_from_yaml(data_yaml)
        if names is not None:
            return names
    if classes_txt.is_file():
        names = [line.strip() for line in classes_txt.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        if names:
            return names
    raise ConfigError(config_file, "data.detection.names", f"no class names: {root} has no data.yaml with "
                                                           "'names' and no classes.txt; list them in the config")


def _names_from_yaml(path: Path) -> list[str] | None:
    """data.yaml's `names`, a list or an {index: name} dict (Ultralytics writes both); None if it has none."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as error:
        raise ConfigError(str(path), "", f"not valid YAML ({error})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if names is None:
        return None
    if isinstance(names, dict):
        if not all(_is_int(key) for key in names) or sorted(names) != list(range(len(names))):
            raise ConfigError(str(path), "names", f"the indices {_sample(list(names))} are not 0..{len(names) - 1}")
        return [str(names[index]) for index in range(len(names))]
    if isinstance(names, list) and names:
        return [str(name) for name in names]
    raise ConfigError(str(path), "names", "not a list of class names or an {index: name} mapping")


def _yolo_labels(label_file: Path, width: int, height: int, classes: int) -> tuple[list, list]:
    """Boxes in pixels and class indices from one label file, each line checked."""
    boxes, labels = [], []
    file = str(label_file)
    for lineno, line in enumerate(label_file.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            values = []
        if len(values) != 5 or not all(np.isfinite(values)):
            raise ConfigError(file, where, f"{line.strip()!r} is not 5 numbers: class cx cy w h")
        klass, cx, cy, w, h = values
        if klass != int(klass) or not 0 <= klass < classes:
            raise ConfigError(file, where, f"class {klass:g} is not an index of the {classes} class names")
        if w <= 0 or h <= 0:
            raise ConfigError(file, where, f"box size {w:g} x {h:g} is not positive")
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        if min(x0, y0) < -BOX_SLACK_NORM or max(x1, y1) > 1 + BOX_SLACK_NORM:
            raise ConfigError(file, where, f"box {cx:g} {cy:g} {w:g} {h:g} is outside the image (coordinates are "
                                           "normalized to [0, 1])")
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, 1.0), min(y1, 1.0)
        if x1 <= x0 or y1 <= y0:
            raise ConfigError(file, where, f"box {cx:g} {cy:g} {w:g} {h:g}: nothing of it is inside the image")
        boxes.append([x0 * width, y0 * height, x1 * width, y1 * height])
        labels.append(int(klass))
    return boxes, labels
