"""A Hugging Face dataset on disk as Records: `hf_records` (its train split) and `hf_split` (another split).

Only local files are read (a folder written by `save_to_disk`, parquet or arrow files): nothing is
downloaded at run time. The Arrow table stays memory-mapped and the image column is read with
decoding off, so memory holds the labels and a row is decoded only when `open` asks for it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import UsageError
from compress.data.manifest import column_names, number_labels, renumber
from compress.data.records import Records

HF_DEFAULTS = {"image": "image", "label": "label"}


class HFRecords(Records):
    """Rows of a datasets.Dataset whose image column holds encoded bytes (or a file path) per row."""

    def __init__(self, images: Any, column: str, labels: np.ndarray, class_names: list[str], where: Path):
        self.images, self.column, self.where = images, column, where  # the Dataset pickles by its file paths
        self.base = where if where.is_dir() else where.parent  # what a relative image path is relative to
        self.labels, self.class_names = labels, class_names

    def name(self, index: int) -> str:
        return f"{self.where}: row {index}"

    def _open(self, index: int):
        from PIL import Image

        value = self.images[int(index)][self.column]
        if isinstance(value, dict):
            if value.get("bytes") is not None:
                value = value["bytes"]
            elif value.get("path"):
                value = str(value["path"])
            else:
                raise ValueError("the row has neither bytes nor a path")
        if isinstance(value, str):
            file = Path(value)
            return Image.open(file if file.is_absolute() else self.base / file)
        return Image.open(io.BytesIO(value))


def hf_records(path: Path, columns: dict[str, str] | None = None, classes: list[str] | None = None,
               field: str = "data.path") -> HFRecords:
    """The dataset at `path`; for a DatasetDict its "train" split (the other splits: `hf_split`)."""
    loaded = _load(path, field)
    if _is_dict(loaded):
        if "train" not in loaded:
            splits = sorted(loaded)
            raise UsageError(f"{path}: {field}: the DatasetDict has no 'train' split (it has {', '.join(splits)}); "
                             f"point {field} at one split's folder, e.g. {path / splits[0]}")
        return _records(loaded["train"], path / "train", columns, classes, field)
    return _records(loaded, path, columns, classes, field)


def hf_split(path: Path, name: str, columns: dict[str, str] | None = None, classes: list[str] | None = None,
             field: str = "data.path") -> HFRecords | None:
    """Split `name` ("validation", "test") of the DatasetDict at `path`; None when there is no such split.

    A plain Dataset (or parquet/arrow files) has no other splits, so it gives None too.
    """
    if not (path.is_dir() and (path / "dataset_dict.json").is_file()):
        return None
    loaded = _load(path, field)
    if name not in loaded:
        return None
    return _records(loaded[name], path / name, columns, classes, field)


def _is_dict(loaded: Any) -> bool:
    import datasets

    return isinstance(loaded, datasets.DatasetDict)


def _load(path: Path, field: str) -> Any:
    """A Dataset or DatasetDict, memory-mapped, from a save_to_disk folder or parquet/arrow files."""
    import datasets
    import pyarrow as pa

    try:
        if path.is_dir():
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                return datasets.load_from_disk(str(path), keep_in_memory=False)
            return _from_files(path, sorted(path.glob("*.parquet")) or sorted(path.glob("*.arrow")), field)
        if not path.exists():
            raise UsageError(f"{path}: {field}: no such file or folder")
        return _from_files(path, [path], field)
    except (OSError, ValueError, pa.ArrowException, datasets.exceptions.DatasetGenerationError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"{path}: {field}: not a readable Hugging Face dataset ({message})") from None


def _from_files(path: Path, files: list[Path], field: str) -> Any:
    import datasets

    kinds = {file.suffix.lower() for file in files}
    if not files or not kinds <= {".parquet", ".arrow"} or len(kinds) > 1:
        raise UsageError(f"{path}: {field}: an hf source is a folder written by save_to_disk, a .parquet or "
                         ".arrow file, or a folder of them")
    if kinds == {".parquet"}:
        return datasets.Dataset.from_parquet([str(file) for file in files], keep_in_memory=False)
    return datasets.concatenate_datasets([datasets.Dataset.from_file(str(file)) for file in files])


def _records(dataset: Any, where: Path, columns: dict[str, str] | None, classes: list[str] | None,
             field: str) -> HFRecords:
    names = column_names(columns, HF_DEFAULTS, "hf")
    for column in (names["image"], names["label"]):
        if column not in dataset.column_names:
            raise UsageError(f"{where}: {column}: no such column (columns: {', '.join(dataset.column_names)}); "
                             "name it in data.columns")
    if len(dataset) == 0:
        raise UsageError(f"{where}: {field}: the dataset has no rows")
    labels, class_names = _labels(dataset, where, names["label"], classes)
    return HFRecords(_image_column(dataset, where, names["image"]), names["image"], labels, class_names, where)


def _image_column(dataset: Any, where: Path, column: str) -> Any:
    """The dataset cut to its image column, decoding off: rows give bytes, never a decoded image."""
    import datasets

    images = dataset.select_columns([column])
    feature = images.features[column]
    if isinstance(feature, datasets.Image):
        return images.cast_column(column, datasets.Image(decode=False))  # a schema change, no copy
    if isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary", "string", "large_string"):
        return images
    raise UsageError(f"{where}: {column}: a {type(feature).__name__} column; images are an Image feature, "
                     "encoded bytes or file paths")


def _labels(dataset: Any, where: Path, column: str, classes: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Labels from the label column alone (read as Arrow, so no image is touched)."""
    import datasets
    import pyarrow as pa

    feature = dataset.features[column]
    values = dataset.select_columns([column]).with_format("arrow")[column]
    at = lambda row: f"{where}: row {row}: {column}"  # noqa: E731
    if isinstance(feature, datasets.ClassLabel):
        return _class_labels(np.asarray(values.to_numpy(), dtype=np.int64), list(feature.names), classes, at)
    if pa.types.is_integer(values.type):
        return number_labels(np.asarray(values.to_numpy(), dtype=np.int64), classes, at)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return number_labels(values.to_pylist(), classes, at)
    raise UsageError(f"{where}: {column}: a {values.type} column; labels are a ClassLabel, integers or class names")


def _class_labels(ids: np.ndarray, names: list[str], classes: list[str] | None, at) -> tuple[np.ndarray, list[str]]:
    """A ClassLabel's ids under its own names, or renumbered by the train split's `classes` names."""
    wrong = (ids < 0) | (ids >= len(names))
    if wrong.any():
        row = int(np.argmax(wrong))
        raise UsageError(f"{at(row)}: {ids[row]} is not a class (the ClassLabel has {len(names)}; -1 means unlabelled)")
    if classes is None:
        return ids, names
    return renumber(ids, names, classes, at)
