"""Detection records split into train/val/test, and the check that their images do not mix channel counts.

Splits given as files (COCO JSONs, YOLO split folders) are kept; the others are drawn per image from a hash of
(seed, the image's path): an image keeps its split when others are added or removed, so a grown data set never
leaks old validation images into training.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from compress.core.errors import ConfigError
from compress.data.records import MODE_CHANNELS, decode_errors
from compress.tasks.object_detection.detection_records import SPLITS, DetectionSet, ImageRecord, _sample, read_coco
from compress.tasks.object_detection.yolo_records import read_yolo, yolo_splits


def load_splits(source: str, path: Path, val_path: Path | None, test_path: Path | None, val_fraction: float,
                test_fraction: float | None, seed: int, images_dir: Path | None, names: list[str] | None,
                config_file: str) -> dict[str, DetectionSet]:
    """{"train", "val"[, "test"]}: the splits given as files (COCO JSONs, YOLO split folders or roots), the rest
    drawn from train's images by `split_of`. "test" is present only when a test split is given or
    `test_fraction` is set."""
    path = Path(path)
    if source == "coco":
        train, given = _coco_splits(path, val_path, test_path, images_dir, config_file)
    elif source == "yolo":
        train, given = _yolo_splits(path, val_path, test_path, names, config_file)
    else:
        raise ConfigError(config_file, "data.source", f"{source!r}: detection data is 'coco' or 'yolo'")
    if not train.images:
        raise ConfigError(config_file, "data.path", f"{path}: no images")
    val_share = 0.0 if "val" in given else val_fraction
    test_share = 0.0 if "test" in given or test_fraction is None else test_fraction
    _check_fractions(val_share, test_share, config_file)
    drawn: dict[str, list[ImageRecord]] = {split: [] for split in SPLITS}
    for record in train.images:
        drawn[split_of(_split_key(record.path, path), val_share, test_share, seed)].append(record)
    splits = {"train": _subset(train, drawn["train"])}
    for split in ("val", "test"):
        if split in given:
            splits[split] = given[split]
        elif split == "val" or test_fraction is not None:
            splits[split] = _subset(train, drawn[split])
    for split, data in splits.items():
        if not data.images:
            field = f"data.{split}_path" if split in given else \
                f"data.{'test' if split == 'test' else 'val'}_fraction"
            raise ConfigError(config_file, field, f"the {split} split has no images "
                                                  f"({len(train.images)} images to split)")
    return splits


def _coco_splits(path: Path, val_path: Path | None, test_path: Path | None, images_dir: Path | None,
                 config_file: str) -> tuple[DetectionSet, dict[str, DetectionSet]]:
    train = read_coco(path, images_dir, config_file)
    given = {}
    for split, other in (("val", val_path), ("test", test_path)):
        if other is None:
            continue
        if not Path(other).is_file():
            raise ConfigError(config_file, f"data.{split}_path", f"{other}: no such file")
        data = read_coco(Path(other), images_dir, config_file)
        if (data.category_ids, data.class_names) != (train.category_ids, train.class_names):
            raise ConfigError(config_file, f"data.{split}_path", f"{other}: its categories "
                                                                 f"({_categories(data)}) differ from {path}'s "
                                                                 f"({_categories(train)})")
        given[split] = data
    return train, given


def _categories(data: DetectionSet) -> str:
    return _sample([f"{i}: {n}" for i, n in zip(data.category_ids, data.class_names)])


def _yolo_splits(path: Path, val_path: Path | None, test_path: Path | None, names: list[str] | None,
                 config_file: str) -> tuple[DetectionSet, dict[str, DetectionSet]]:
    """A root's own split folders, or its flat images as train; a val/test path is another (flat or split)
    root that takes train's class names."""
    present = yolo_splits(path)
    if present and "train" not in present:
        raise ConfigError(config_file, "data.path", f"{path}/images has {', '.join(present)} but no train/")
    train = read_yolo(path, "train" if present else None, names, config_file)
    given = {split: read_yolo(path, split, train.class_names, config_file) for split in present if split != "train"}
    for split, other in (("val", val_path), ("test", test_path)):
        if other is not None:
            given[split] = read_yolo(Path(other), split if split in yolo_splits(other) else None,
                                     train.class_names, config_file)
    return train, given


def _check_fractions(val_fraction: float, test_fraction: float, config_file: str) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(config_file, f"data.{name}", f"{value} is not in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(config_file, "data.val_fraction",
                          f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no train images")


def split_of(key: str, val_fraction: float, test_fraction: float, seed: int) -> str:
    """"train", "val" or "test" for one image, from a hash of (seed, key): needs no list of the data set, and
    an image keeps its split whatever others are added or removed."""
    digest = hashlib.blake2b(f"{seed}\0{key}".encode("utf-8"), digest_size=8).digest()
    draw = int.from_bytes(digest, "big") / 2**64
    if draw < test_fraction:
        return "test"
    return "val" if draw < test_fraction + val_fraction else "train"


def _split_key(image: Path, source: Path) -> str:
    """The image's path relative to the data set (the JSON's folder or the YOLO root), so that moving the
    data set elsewhere keeps every split."""
    base = source.parent if source.is_file() else source
    try:
        return image.relative_to(base).as_posix()
    except ValueError:
        return image.as_posix()


def _subset(data: DetectionSet, images: list[ImageRecord]) -> DetectionSet:
    return DetectionSet(images, data.class_names, data.category_ids)


# ---- channels --------------------------------------------------------------------------------------------

def check_channels(images: list[ImageRecord], channels: int | None, file: str, field: str) -> int:
    """The images' channel count (1 or 3; alpha is ignored, a palette counts as colour) from their headers.

    The model always takes RGB; this refuses a set that mixes grey and colour images unless `channels` says
    how to read them, as the image classifiers do, since a mixture usually means a mistake in the data.
    """
    from PIL import Image

    if channels is not None and channels not in (1, 3):
        raise ConfigError(file, field, f"{channels}: channels is 1 or 3")
    first_of: dict[int, Path] = {}
    for record in images:
        try:
            with Image.open(record.path) as image:
                mode = image.mode
        except decode_errors() as error:
            raise ConfigError(str(record.path), "", f"not a readable image ({error})") from None
        first_of.setdefault(1 if MODE_CHANNELS.get(mode, 3) <= 2 else 3, record.path)
        if channels is not None:
            continue
        if len(first_of) > 1:
            examples = ", ".join(f"{path.name} has {count}" for count, path in sorted(first_of.items()))
            raise ConfigError(file, field, f"images of mixed channel counts ({examples}); set data.channels: 3 "
                                           "(or 1) to read them all alike")
    return channels if channels is not None else next(iter(first_of), 3)
