"""Detection annotations as records: which image, its size and its boxes, read from COCO JSON (here) or a YOLO
folder (yolo_records.py); detection_splits.py splits them into train/val/test.

Nothing here decodes pixels: COCO gives each image's size in its JSON, and a YOLO image's size comes from its
file header, so reading a data set costs one pass over its annotations however many images it has. Every
defect a reader can see (a box outside its image, a class that is not declared, a label line that is not five
numbers) is refused here, naming the file and the place in it, so that training never starts on data that
would have been silently misread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import ConfigError

SPLITS = ("train", "val", "test")
COCO_KEYS = ("images", "annotations", "categories")
BOX_SLACK_PX = 1.0  # COCO boxes are often rounded outwards by a pixel
BOX_SLACK_NORM = 1e-3  # YOLO's normalized boxes are often written with a few decimals


@dataclass
class ImageRecord:
    image_id: int  # COCO image id (YOLO: running index from 1)
    path: Path  # image file
    width: int
    height: int
    boxes: np.ndarray  # float32 [N, 4] xyxy in original-image pixels (N may be 0: background image)
    labels: np.ndarray  # int64 [N] contiguous class index 0..C-1


@dataclass
class DetectionSet:
    images: list[ImageRecord]
    class_names: list[str]
    category_ids: list[int]  # COCO category id of each class index (YOLO: the class index)


def _no_boxes() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)


def _record(image_id: int, path: Path, width: int, height: int, boxes: list, labels: list) -> ImageRecord:
    if not boxes:
        return ImageRecord(image_id, path, width, height, *_no_boxes())
    return ImageRecord(image_id, path, width, height, np.asarray(boxes, np.float32).reshape(-1, 4),
                       np.asarray(labels, np.int64))


# ---- COCO ------------------------------------------------------------------------------------------------

def read_coco(json_path: Path, images_dir: Path | None, config_file: str) -> DetectionSet:
    """A COCO detection JSON as records; crowd annotations are skipped (they mark regions, not objects).

    Class index = position of the category in `categories` sorted by id, so non-contiguous ids (COCO's own
    1..90 with gaps) become 0..C-1 and `category_ids` maps them back for scoring. Images without
    annotations stay as background images.
    """
    json_path = Path(json_path)
    data = _load_coco_json(json_path, config_file)
    file = str(json_path)
    index_of, class_names, category_ids = _coco_categories(data["categories"], file)
    images, order = _coco_images(data["images"], json_path, images_dir, file)
    boxes: dict[int, list] = {image_id: [] for image_id in order}
    labels: dict[int, list] = {image_id: [] for image_id in order}
    for number, annotation in enumerate(data["annotations"]):
        where = f"annotations[{number}]"
        if not isinstance(annotation, dict):
            raise ConfigError(file, where, "not a JSON object")
        if annotation.get("iscrowd", 0):
            continue
        image_id = annotation.get("image_id")
        if image_id not in images:
            raise ConfigError(file, f"{where}.image_id", f"{image_id!r} is not the id of an image in 'images'")
        category = annotation.get("category_id")
        if category not in index_of:
            raise ConfigError(file, f"{where}.category_id", f"{category!r} is not the id of a category in "
                                                            f"'categories' ({_sample(sorted(index_of))})")
        _, width, height = images[image_id]
        boxes[image_id].append(_coco_box(annotation.get("bbox"), width, height, file, f"{where}.bbox"))
        labels[image_id].append(index_of[category])
    records = [_record(image_id, *images[image_id], boxes[image_id], labels[image_id]) for image_id in order]
    return DetectionSet(records, class_names, category_ids)


def _load_coco_json(json_path: Path, config_file: str) -> dict[str, Any]:
    if not json_path.is_file():
        raise ConfigError(config_file, "data.path", f"{json_path}: no such file")
    try:
        data = json.loads(json_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        where = f"line {error.lineno}" if isinstance(error, json.JSONDecodeError) else ""
        raise ConfigError(str(json_path), where, f"not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(str(json_path), "", "not a COCO file (the top level is not a JSON object)")
    for key in COCO_KEYS:
        if not isinstance(data.get(key), list):
            problem = "missing" if key not in data else "not a list"
            raise ConfigError(str(json_path), key, f"{problem}: a COCO detection file has lists "
                                                   f"{', '.join(COCO_KEYS)}")
    return data


def _coco_categories(categories: list, file: str) -> tuple[dict[int, int], list[str], list[int]]:
    """{category id: class index}, class names and category ids in class-index order (sorted by id)."""
    named: dict[int, str] = {}
    for number, category in enumerate(categories):
        where = f"categories[{number}]"
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise ConfigError(file, f"{where}.id", "a category needs an integer 'id'")
        if category["id"] in named:
            raise ConfigError(file, f"{where}.id", f"category id {category['id']} is used twice")
        named[category["id"]] = str(category.get("name", category["id"]))
    if not named:
        raise ConfigError(file, "categories", "no categories: a detector needs at least one class")
    ids = sorted(named)
    return {category_id: index for index, category_id in enumerate(ids)}, [named[i] for i in ids], ids


def _coco_images(images: list, json_path: Path, images_dir: Path | None,
                 file: str) -> tuple[dict[int, tuple[Path, int, int]], list[int]]:
    """{image id: (path, width, height)} and the ids in file order; every file must exist (its pixels are
    not opened: the size comes from the JSON)."""
    found: dict[int, tuple[Path, int, int]] = {}
    for number, image in enumerate(images):
        where = f"images[{number}]"
        if not isinstance(image, dict):
            raise ConfigError(file, where, "not a JSON object")
        for key in ("id", "width", "height"):
            if not _is_int(image.get(key)) or (key != "id" and image[key] <= 0):
                raise ConfigError(file, f"{where}.{key}", f"{image.get(key)!r} is not a "
                                                          f"{'integer' if key == 'id' else 'positive integer'}")
        if image["id"] in found:
            raise ConfigError(file, f"{where}.id", f"image id {image['id']} is used twice")
        name = image.get("file_name")
        if not isinstance(name, str) or not name:
            raise ConfigError(file, f"{where}.file_name", "missing: each image needs its file_name")
        found[image["id"]] = (_coco_file(name, json_path, images_dir, file, f"{where}.file_name"),
                              image["width"], image["height"])
    return found, list(found)


def _coco_file(name: str, json_path: Path, images_dir: Path | None, file: str, where: str) -> Path:
    """`images_dir`/name; unset, the JSON's folder then images/ beside it (the two layouts exporters write)."""
    folders = [Path(images_dir)] if images_dir is not None else [json_path.parent, json_path.parent / "images"]
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    looked = " or ".join(str(folder) for folder in folders)
    raise ConfigError(file, where, f"{name}: no such image in {looked}"
                                   + ("" if images_dir is not None else "; set data.images_dir to its folder"))


def _coco_box(bbox: Any, width: int, height: int, file: str, where: str) -> list[float]:
    """COCO [x, y, w, h] as xyxy, clipped to the image after allowing BOX_SLACK_PX of rounding."""
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise ConfigError(file, where, f"{bbox!r} is not [x, y, width, height]")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise ConfigError(file, where, f"{bbox}: width and height must be positive")
    if x < -BOX_SLACK_PX or y < -BOX_SLACK_PX or x + w > width + BOX_SLACK_PX or y + h > height + BOX_SLACK_PX:
        raise ConfigError(file, where, f"{bbox}: outside the {width}x{height} image")
    box = [max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))]
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ConfigError(file, where, f"{bbox}: nothing of it is inside the {width}x{height} image")
    return box


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _sample(values: list) -> str:
    return ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
