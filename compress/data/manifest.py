"""A CSV or JSONL manifest of image files and labels: `manifest_records` reads it into a FileRecords.

A manifest lets a data set live anywhere on disk (no folder per class) and carry integer labels
that already mean something. Also here: the label numbering that every listed source shares
(`number_labels`) and the `data.columns` reader (`column_names`), so a manifest, a Hugging Face
dataset and webdataset shards number their classes the same way.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from compress.core.errors import UsageError
from compress.data.records import FileRecords

MANIFEST_DEFAULTS = {"image": "path", "label": "label"}
CSV_SUFFIXES = {".csv"}
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
INTEGER = re.compile(r"-?[0-9]+")


def column_names(columns: dict[str, str] | None, defaults: dict[str, str], source: str) -> dict[str, str]:
    """`defaults` with `data.columns` laid over them; a key the source does not read is refused by name."""
    columns = columns or {}
    unknown = sorted(set(columns) - set(defaults))
    if unknown:
        raise UsageError(f"data.columns.{unknown[0]}: not a column of source '{source}' "
                         f"(it reads {', '.join(sorted(defaults))})")
    return {**defaults, **columns}


def _listed(classes: Sequence[str]) -> str:
    return ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")


def number_labels(raw: Sequence[Any], classes: list[str] | None,
                  where: Callable[[int], str]) -> tuple[np.ndarray, list[str]]:
    """(int64 labels, class names) from raw labels that are all integers or all class names.

    Integers are kept as given, named "0".."K-1" (a manifest written for a model keeps its
    numbers); names are numbered in sorted order like ImageFolder. `classes` (the train split's)
    numbers a val split the same way and refuses a class the train split lacks. `where(i)` names
    example i in an error ("manifest.csv:17: label").
    """
    if isinstance(raw, np.ndarray) and np.issubdtype(raw.dtype, np.integer):
        return integer_labels(raw, classes, where)
    texts = [_label_text(value, where, i) for i, value in enumerate(raw)]
    if classes is not None:
        return _known_classes(texts, classes, where), list(classes)
    numeric = [INTEGER.fullmatch(text) is not None for text in texts]
    if all(numeric):
        return integer_labels(np.array([int(text) for text in texts], dtype=np.int64), None, where)
    if any(numeric):
        number, name = numeric.index(True), numeric.index(False)
        raise UsageError(f"{where(number)}: '{texts[number]}' is an integer but {where(name)} is the class name "
                         f"'{texts[name]}'; use integers or names throughout")
    names = sorted(set(texts))
    index = {name: k for k, name in enumerate(names)}
    return np.array([index[text] for text in texts], dtype=np.int64), names


def integer_labels(raw: np.ndarray, classes: list[str] | None,
                   where: Callable[[int], str]) -> tuple[np.ndarray, list[str]]:
    """`number_labels` for an integer array, without a Python object per example (a million-row dataset)."""
    labels = raw.astype(np.int64)
    if labels.size and labels.min() < 0:
        first = int(np.argmax(labels < 0))
        raise UsageError(f"{where(first)}: {labels[first]} is negative; labels count from 0")
    if classes is None:
        return labels, [str(k) for k in range(int(labels.max()) + 1 if labels.size else 0)]
    return renumber(labels, [str(k) for k in range(int(labels.max()) + 1 if labels.size else 0)], classes, where)


def renumber(ids: np.ndarray, names: list[str], classes: list[str],
             where: Callable[[int], str]) -> tuple[np.ndarray, list[str]]:
    """Label ids under their own `names` renumbered by the train split's `classes`; a class train lacks is refused."""
    index = {name: k for k, name in enumerate(classes)}
    lookup = np.array([index.get(name, -1) for name in names], dtype=np.int64)
    mapped = lookup[ids]
    if (mapped < 0).any():
        first = int(np.argmax(mapped < 0))
        raise UsageError(f"{where(first)}: class '{names[ids[first]]}' is not among the train classes "
                         f"({_listed(classes)})")
    return mapped, list(classes)


def _label_text(value: Any, where: Callable[[int], str], i: int) -> str:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, str, np.integer)):
        if value is None:
            raise UsageError(f"{where(i)}: empty label")
        raise UsageError(f"{where(i)}: {value!r} is neither a class name nor an integer")
    text = str(value).strip()
    if not text:
        raise UsageError(f"{where(i)}: empty label")
    return text


def _known_classes(texts: list[str], classes: list[str], where: Callable[[int], str]) -> np.ndarray:
    index = {name: k for k, name in enumerate(classes)}
    labels = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        if text not in index and INTEGER.fullmatch(text):
            text = str(int(text))  # "07" is class "7" of an integer-labelled train split
        if text not in index:
            raise UsageError(f"{where(i)}: class '{text}' is not among the train classes ({_listed(classes)})")
        labels[i] = index[text]
    return labels


def manifest_records(path: Path, columns: dict[str, str] | None = None, classes: list[str] | None = None,
                     field: str = "data.path") -> FileRecords:
    """The images a manifest lists, relative paths resolved against the manifest's folder.

    Every listed file must exist: a missing one is refused now, naming its line, rather than an
    hour into training.
    """
    names = column_names(columns, MANIFEST_DEFAULTS, "manifest")
    image_column, label_column = names["image"], names["label"]
    rows = list(_rows(path, field, (image_column, label_column)))
    if not rows:
        raise UsageError(f"{path}: {field}: the manifest has no rows")
    files = [_listed_file(path, line, image_column, row.get(image_column)) for line, row in rows]
    labels, class_names = number_labels([row.get(label_column) for _, row in rows], classes,
                                        lambda i: f"{path}:{rows[i][0]}: {label_column}")
    return FileRecords(files, labels, class_names)


def _listed_file(manifest: Path, line: int, column: str, value: Any) -> Path:
    if value is None or not str(value).strip():
        raise UsageError(f"{manifest}:{line}: {column}: empty")
    if not isinstance(value, str):
        raise UsageError(f"{manifest}:{line}: {column}: {value!r} is not a file path")
    file = Path(value.strip()).expanduser()
    file = file if file.is_absolute() else manifest.parent / file
    if not file.is_file():
        raise UsageError(f"{manifest}:{line}: {column}: {value.strip()} does not exist")
    return file


def _rows(path: Path, field: str, needed: tuple[str, str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) for every row of a CSV (header row) or JSONL (one object per line) manifest."""
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES | JSONL_SUFFIXES:
        raise UsageError(f"{path}: {field}: a manifest is a .csv (with a header row) or a .jsonl file "
                         "(one JSON object per line)")
    if not path.is_file():
        raise UsageError(f"{path}: {field}: no such file")
    reader = _csv_rows if suffix in CSV_SUFFIXES else _jsonl_rows
    try:
        yield from reader(path, needed)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _not_utf8(path: Path) -> UsageError:
    """The first line of `path` that is not UTF-8, with its byte; lines decode alone, as a newline byte
    is never part of a UTF-8 character. Read a line at a time, only once the decoder has failed."""
    with path.open("rb") as stream:
        for line, raw in enumerate(stream, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return UsageError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[error.start]:02x}); save the file "
                                  "as UTF-8")
    return UsageError(f"{path}: not UTF-8 text; save the file as UTF-8")


def _csv_rows(path: Path, needed: tuple[str, str]) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        header = reader.fieldnames or []
        for column in needed:
            if column not in header:
                found = ", ".join(header) if header else "none"
                raise UsageError(f"{path}:1: {column}: no such column in the header (columns: {found}); "
                                 "name it in data.columns")
        try:
            for row in reader:
                yield reader.line_num, row
        except csv.Error as error:  # a field over csv's size limit; line_num counts the lines before the row
            raise UsageError(f"{path}:{reader.line_num + 1}: {error}") from None


def _jsonl_rows(path: Path, needed: tuple[str, str]) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig") as stream:
        for line, text in enumerate(stream, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                raise UsageError(f"{path}:{line}: not valid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(row, dict):
                raise UsageError(f"{path}:{line}: not a JSON object (one object per line, like "
                                 f'{{"{needed[0]}": "a.jpg", "{needed[1]}": "cat"}})')
            for column in needed:
                if column not in row:
                    raise UsageError(f"{path}:{line}: {column}: missing (keys: {', '.join(row) or 'none'}); "
                                     "name it in data.columns")
            yield line, row
