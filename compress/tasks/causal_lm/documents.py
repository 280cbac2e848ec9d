"""A causal LM corpus's documents, read lazily: (document id, text) from text files and folders, JSONL, CSV, Hugging
Face datasets on disk and webdataset shards; prompt/response rows as PromptedText.

The path and format are checked when reading starts, so a typo fails before any work; a content error (a file
that is not UTF-8, a row without its column) is refused naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from compress.core.errors import ConfigError

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst")
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")  # webdataset shards

Documents = Iterator[tuple[str, str]]


class PromptedText(str):
    """A prompt and its response as one document (the text is both): packing marks the prompt's tokens, so the
    losses and the perplexity count the response only (supervised fine-tuning's completion-only loss)."""

    prompt: str
    response: str

    def __new__(cls, prompt: str, response: str) -> "PromptedText":
        text = super().__new__(cls, prompt + response)
        text.prompt, text.response = prompt, response
        return text


@dataclass(frozen=True)
class Columns:
    """Where a row's document is: one text column, or a prompt and a response column."""

    text: str = "text"
    prompt: str | None = None
    response: str = "response"

    @property
    def names(self) -> list[str]:
        return [self.text] if self.prompt is None else [self.prompt, self.response]

    def field(self, name: str) -> str:
        return "text_column" if self.prompt is None else \
            "prompt_column" if name == self.prompt else "response_column"


# ---- reading ---------------------------------------------------------------------------------------------

def iter_documents(path: Path, suffixes: tuple[str, ...] = TEXT_SUFFIXES, text_column: str = "text",
                   config_file: str = "pipeline.yaml", field_prefix: str = "data",
                   prompt_column: str | None = None, response_column: str = "response") -> Documents:
    """(document id, text) from a folder, a text file, a .jsonl, a .csv, a save_to_disk dataset or webdataset
    shards (a .tar, a folder of them, or a brace pattern), lazily.

    With `prompt_column`, each row of a JSONL, CSV or dataset is a PromptedText of its prompt and response columns.
    The path and format are checked now, so a typo fails before any work; content errors surface as read.
    """
    path = Path(path)
    where = f"{field_prefix}.path"
    columns = Columns(text_column, prompt_column, response_column)
    if prompt_column is not None and not has_rows(path):
        raise ConfigError(config_file, f"{field_prefix}.corpus.prompt_column",
                          f"{path}: prompt/response pairs are rows of a JSONL, a CSV or a Hugging Face dataset; "
                          "files, folders and shards hold plain documents")
    if "{" in path.name:  # webdataset's brace pattern: train-{000000..000009}.tar
        from compress.core.errors import UsageError
        from compress.data.shards import shard_files

        try:
            shards = shard_files(path, where)
        except UsageError as error:
            raise ConfigError(config_file, where, str(error).replace(f": {where}", "", 1)) from None
        return _nonempty(_webdataset_documents(shards, text_column, config_file, where), path, config_file, where)
    if not path.exists():
        raise ConfigError(config_file, where, f"{path}: no such file or folder")
    if path.is_dir() and any((path / marker).is_file() for marker in HF_MARKERS):
        return _hf_documents(path, columns, config_file, field_prefix)
    if path.is_dir():
        shards = _shards_in(path, suffixes)
        if shards:
            return _nonempty(_webdataset_documents(shards, text_column, config_file, where), path, config_file, where)
        return _folder_documents(path, suffixes, config_file, where)
    if _is_shard(path):
        return _nonempty(_webdataset_documents([path], text_column, config_file, where), path, config_file, where)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".csv"):
        read = _jsonl_documents if suffix == ".jsonl" else _csv_documents
        reader: Documents = _utf8_rows(path, read(path, columns, config_file, field_prefix), config_file, where)
    elif suffix in suffixes:
        reader = iter([(path.name, _read_text(path, config_file, where))])
    else:
        raise ConfigError(config_file, where, f"{path}: not a corpus (a folder, a .jsonl, a .csv, a save_to_disk "
                                              f"dataset, webdataset .tar shards or a text file ending "
                                              f"{', '.join(suffixes)})")
    return _nonempty(reader, path, config_file, where)


def has_rows(path: Path) -> bool:
    """A JSONL, a CSV or a save_to_disk dataset: sources of rows with columns."""
    if path.is_dir():
        return any((path / marker).is_file() for marker in HF_MARKERS)
    return path.suffix.lower() in (".jsonl", ".csv")


def _row_document(row: Any, columns: Columns, where: str, config_file: str, prefix: str) -> str:
    """A row's text (None is an empty document), or its PromptedText; a missing or non-text column refused."""
    values = []
    for name in columns.names:
        value = row.get(name, ...) if isinstance(row, dict) else ...
        if value is not None and not isinstance(value, str):
            found = f"keys: {', '.join(row) or 'none'}" if isinstance(row, dict) else "not a JSON object"
            raise ConfigError(config_file, f"{prefix}.{'' if columns.prompt is None else 'corpus.'}"
                                           f"{columns.field(name)}", f"{where}: no text under {name!r} ({found})")
        values.append(value or "")
    return values[0] if columns.prompt is None else PromptedText(*values)


def _nonempty(documents: Documents, path: Path, config_file: str, where: str) -> Documents:
    """Refuse a file that held no documents, once it has been read to its end."""
    count = 0
    for count, document in enumerate(documents, start=1):
        yield document
    if not count:
        raise ConfigError(config_file, where, f"{path}: no documents found")


def _folder_documents(folder: Path, suffixes: tuple[str, ...], config_file: str, where: str) -> Documents:
    """Every file with a text suffix under `folder`, by sorted relative path; hidden files and folders
    (.git, .venv) are skipped as they are never the corpus."""
    files = sorted((file.relative_to(folder).as_posix(), file) for file in folder.rglob("*")
                   if file.suffix.lower() in suffixes and file.is_file()
                   and not any(part.startswith(".") for part in file.relative_to(folder).parts))
    if not files:
        raise ConfigError(config_file, where, f"{folder}: no documents found (no files ending "
                                              f"{', '.join(suffixes)})")
    return ((name, _read_text(file, config_file, where)) for name, file in files)


def _is_shard(path: Path) -> bool:
    return path.name.lower().endswith(SHARD_SUFFIXES)


def _shards_in(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The webdataset shards at the top of `folder`, in order; none where text files sit beside them (then the
    folder is a folder of documents and a stray archive in it is not the corpus)."""
    top = [file for file in folder.iterdir() if file.is_file() and not file.name.startswith(".")]
    if any(file.suffix.lower() in suffixes for file in top):
        return []
    return sorted(file for file in top if _is_shard(file))


def _webdataset_documents(shards: list[Path], column: str, config_file: str, where: str) -> Documents:
    """Webdataset's layout: each sample is the members of a shard that share a key (the member's path up to the
    first dot of its name); its `.txt` member (or `.text`, or `.<text_column>`) is one document. Streamed member
    by member (tarfile's "r|*": plain or compressed), so a shard is never held whole."""
    fields = {"txt", "text", column.lower()}
    for shard in shards:
        try:
            with tarfile.open(shard, "r|*") as archive:
                for member in archive:
                    folder, _, name = member.name.rpartition("/")
                    key, _, extension = name.partition(".")
                    if not member.isfile() or extension.lower() not in fields:
                        continue
                    data = archive.extractfile(member).read()
                    try:
                        text = data.decode("utf-8").removeprefix("\ufeff")
                    except UnicodeDecodeError as error:
                        raise _not_utf8(f"{shard}:{member.name}", error.start, data[error.start], config_file,
                                        where) from None
                    yield f"{shard.name}:{folder + '/' if folder else ''}{key}", text
        except tarfile.TarError as error:
            raise ConfigError(config_file, where, f"{shard}: not a readable tar shard ({error})") from None


def _read_text(file: Path, config_file: str, where: str) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise _not_utf8(file, error.start, data[error.start], config_file, where) from None


def _not_utf8(file: Path | str, offset: int, byte: int, config_file: str, where: str) -> ConfigError:
    return ConfigError(config_file, where, f"{file}: not UTF-8 text (byte 0x{byte:02x} at offset {offset}); "
                                           "save it as UTF-8")


def _utf8_rows(file: Path, rows: Documents, config_file: str, where: str) -> Documents:
    """`rows` read from a text stream; on a decoding error, find the first bad byte a line at a time (a newline
    byte is never part of a UTF-8 character) to name its offset."""
    try:
        yield from rows
    except UnicodeDecodeError:
        offset = 0
        with file.open("rb") as stream:
            for line in stream:
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise _not_utf8(file, offset + error.start, line[error.start], config_file, where) from None
                offset += len(line)
        raise


def _jsonl_documents(file: Path, columns: Columns, config_file: str, prefix: str) -> Documents:
    with file.open(encoding="utf-8-sig") as stream:
        for lineno, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(config_file, f"{prefix}.path", f"{file}:{lineno}: not JSON ({error.msg})") from None
            yield f"{file.name}:{lineno}", _row_document(row, columns, f"{file}:{lineno}", config_file, prefix)


def _csv_documents(file: Path, columns: Columns, config_file: str, prefix: str) -> Documents:
    # A document is often over the csv module's 128 KiB field limit. The limit is process-wide, and other
    # readers (text classification's) rely on it to refuse a runaway field: raised only while this reads.
    before = csv.field_size_limit(2**31 - 1)
    try:
        with file.open(newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            header = reader.fieldnames or []
            _check_header(header, columns, str(file), config_file, prefix)
            for rowno, row in enumerate(reader, start=1):
                yield f"{file.name}:{rowno}", _row_document(row, columns, f"{file}:{rowno}", config_file, prefix)
    finally:
        csv.field_size_limit(before)


def _check_header(header: list[str], columns: Columns, where: str, config_file: str, prefix: str) -> None:
    for name in columns.names:
        if name not in header:
            field = columns.field(name) if columns.prompt is None else f"corpus.{columns.field(name)}"
            raise ConfigError(config_file, f"{prefix}.{field}", f"{where}: no column {name!r} "
                                                               f"(columns: {', '.join(header) or 'none'})")


def _hf_documents(folder: Path, columns: Columns, config_file: str, prefix: str) -> Documents:
    """A save_to_disk Dataset, or a DatasetDict's train split, memory-mapped and read in batches."""
    import datasets

    try:
        dataset = datasets.load_from_disk(str(folder), keep_in_memory=False)
    except (OSError, ValueError) as error:
        raise ConfigError(config_file, f"{prefix}.path", f"{folder}: not a readable Hugging Face dataset "
                                                         f"({str(error).splitlines()[0] if str(error) else error!r})")
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise ConfigError(config_file, f"{prefix}.path", f"{folder}: no train split "
                                                             f"(splits: {', '.join(dataset)})")
        dataset = dataset["train"]
    _check_header(list(dataset.column_names), columns, str(folder), config_file, prefix)
    return _nonempty(_hf_rows(dataset.select_columns(columns.names), columns, folder.name), folder, config_file,
                     f"{prefix}.path")


def _hf_rows(dataset: Any, columns: Columns, name: str) -> Documents:
    index = 0
    for batch in dataset.iter(batch_size=1000):
        for values in zip(*(batch[column] for column in columns.names)):
            texts = [value or "" for value in values]
            yield f"{name}:{index}", texts[0] if columns.prompt is None else PromptedText(*texts)
            index += 1
