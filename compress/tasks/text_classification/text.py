"""A labelled text set from a CSV or JSONL file, or a Hugging Face dataset on local disk: `read_texts`.

The files are read as the image manifests are (compress.data.manifest: a header row, or one JSON
object per line) and the local datasets as hf_source reads them (save_to_disk folders, parquet,
arrow; nothing downloaded), and labels are numbered by the same rule (`number_labels`): integers
kept, class names numbered in sorted order, a val split numbered by the train split's classes.
Every text is checked now, naming its line or row, rather than when a batch of it is tokenised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from compress.core.errors import UsageError
from compress.data.hf_source import _is_dict, _labels, _load
from compress.data.manifest import CSV_SUFFIXES, JSONL_SUFFIXES, _rows, column_names, number_labels
from compress.data.sources import check_labels

TEXT_DEFAULTS = {"text": "text", "label": "label"}
HF_SUFFIXES = {".parquet", ".arrow"}


@dataclass
class TextRecords:
    """Texts with int64 labels (indices into `classes`); `where` names the file or folder in messages."""

    texts: list[str]
    labels: np.ndarray
    classes: list[str]
    where: str

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> "TextRecords":
        indices = np.asarray(indices, dtype=np.int64)
        return TextRecords([self.texts[i] for i in indices], self.labels[indices], list(self.classes), self.where)


def read_texts(path: str | Path, columns: dict[str, str] | None = None, classes: list[str] | None = None,
               field: str = "data.path", every_class: bool = False, split: str = "train") -> TextRecords:
    """The texts and labels at `path`: .csv, .jsonl, .parquet, .arrow, or a save_to_disk folder.

    `columns` renames the text and label columns ({"text": "sentence"}); `classes` (the train
    split's) numbers a val split alike and refuses a label train lacks; `every_class` also refuses
    a class of `classes` with no example here. `split` picks the split of a DatasetDict.
    """
    path = Path(path).expanduser()
    names = column_names(columns, TEXT_DEFAULTS, "text")
    suffix = path.suffix.lower()
    if not path.is_dir() and suffix in CSV_SUFFIXES | JSONL_SUFFIXES:
        records = _file_records(path, names, classes, field)
    elif path.is_dir() or suffix in HF_SUFFIXES:
        records = _dataset_records(path, names, classes, field, split)
    elif not path.exists():
        raise UsageError(f"{path}: {field}: no such file or folder")
    else:
        raise UsageError(f"{path}: {field}: a text data set is a .csv (header row) or .jsonl file, a .parquet or "
                         ".arrow file, or a Hugging Face dataset folder (save_to_disk)")
    if every_class and classes is not None:
        _check_every_class(records, names["label"])
    if classes is None:  # the split that defines the classes: one class would score top-1 1.0 and mean nothing
        check_labels(f"{records.where}: {names['label']}", records.labels, records.classes)
    return records


def read_text_split(path: str | Path, name: str, columns: dict[str, str] | None = None,
                    classes: list[str] | None = None, field: str = "data.path") -> TextRecords | None:
    """Split `name` ("validation", "test") of the DatasetDict at `path`; None when it has no such split.

    A CSV, a JSONL, a plain Dataset or parquet/arrow files have no other splits, so they give None too.
    """
    path = Path(path).expanduser()
    if not (path.is_dir() and (path / "dataset_dict.json").is_file()):
        return None
    if name not in _load_dataset(path, field):
        return None
    return read_texts(path, columns, classes, field, split=name)


# ---------------------------------------------------------------- CSV and JSONL


def _file_records(path: Path, names: dict[str, str], classes: list[str] | None, field: str) -> TextRecords:
    text_column, label_column = names["text"], names["label"]
    if path.is_file() and _blank(path):
        raise UsageError(f"{path}: {field}: the file is empty")
    rows = list(_rows(path, field, (text_column, label_column)))
    if not rows:
        raise UsageError(f"{path}: {field}: no rows" + (" under the header" if path.suffix.lower() == ".csv" else ""))
    texts = [_text(row.get(text_column), lambda: f"{path}:{line}: {text_column}") for line, row in rows]
    labels, class_names = number_labels([row.get(label_column) for _, row in rows], classes,
                                        lambda i: f"{path}:{rows[i][0]}: {label_column}")
    return TextRecords(texts, labels, class_names, str(path))


def _blank(path: Path, chunk: int = 1 << 16) -> bool:
    """Whether the file holds nothing but whitespace (and a byte-order mark), read a chunk at a time."""
    with path.open("rb") as stream:
        first = True
        while block := stream.read(chunk):
            if first and block.startswith(b"\xef\xbb\xbf"):
                block = block[3:]
            first = False
            if block.strip():
                return False
    return True


def _text(value: Any, where: Callable[[], str]) -> str:
    """A row's text, refused when it is missing, blank or not a string (a JSON number, a list)."""
    if value is not None and not isinstance(value, str):
        raise UsageError(f"{where()}: {value!r} is not a text (a JSON string)")
    if value is None or not value.strip():
        raise UsageError(f"{where()}: empty text")
    return value


# ---------------------------------------------------------------- Hugging Face datasets on disk


def _dataset_records(path: Path, names: dict[str, str], classes: list[str] | None, field: str,
                     split: str) -> TextRecords:
    if not path.exists():
        raise UsageError(f"{path}: {field}: no such file or folder")
    loaded = _load_dataset(path, field)
    where = path
    if _is_dict(loaded):
        if split not in loaded:
            raise UsageError(f"{path}: {field}: the DatasetDict has no '{split}' split (it has "
                             f"{', '.join(sorted(loaded))})")
        loaded, where = loaded[split], path / split
    text_column, label_column = names["text"], names["label"]
    for column in (text_column, label_column):
        if column not in loaded.column_names:
            raise UsageError(f"{where}: {column}: no such column (columns: {', '.join(loaded.column_names)}); "
                             "name it in data.columns")
    if len(loaded) == 0:
        raise UsageError(f"{where}: {field}: the dataset has no rows")
    texts = _text_column(loaded, where, text_column)
    labels, class_names = _labels(loaded, where, label_column, classes)
    return TextRecords(texts, labels, class_names, str(where))


def _load_dataset(path: Path, field: str) -> Any:
    """hf_source's loader, less its one crash: datasets cannot concatenate the no tables of an empty save_to_disk."""
    try:
        return _load(path, field)
    except IndexError:
        raise UsageError(f"{path}: {field}: the dataset has no rows (no data files in it)") from None


def _text_column(dataset: Any, where: Path, column: str) -> list[str]:
    """The text column as Python strings, read as Arrow (the label column and any others are not touched)."""
    import pyarrow as pa

    values = dataset.select_columns([column]).with_format("arrow")[column]
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise UsageError(f"{where}: {column}: a {values.type} column; texts are strings")
    texts = values.to_pylist()
    for row, text in enumerate(texts):
        if text is None or not text.strip():
            raise UsageError(f"{where}: row {row}: {column}: empty text")
    return texts


# ---------------------------------------------------------------- checks across the set


def _check_every_class(records: TextRecords, label_column: str) -> None:
    counts = np.bincount(records.labels, minlength=len(records.classes))
    empty = [name for name, count in zip(records.classes, counts) if count == 0]
    if empty:
        listed = ", ".join(f"'{name}'" for name in empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise UsageError(f"{records.where}: {label_column}: no example of class {listed} "
                         f"(of {len(records.classes)} classes given)")
