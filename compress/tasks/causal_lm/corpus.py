"""A language model's corpus: read documents, split them, train a byte-level BPE, pack token ids on disk.

Everything streams: documents are read one at a time and token ids are appended to raw files per split,
so memory stays flat however large the corpus. Splits are drawn per document from a hash of its id, so a
document's text never lands in two splits and adding a document never moves another.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import tarfile
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from compress.core.errors import ConfigError
from compress.core.fileio import atomic_path, read_json, write_json

END_OF_TEXT = "<|endoftext|>"
TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst")
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")  # webdataset shards
SPLITS = ("train", "val", "test")
META_FILE = "meta.json"
ENCODE_BATCH_DOCS, ENCODE_BATCH_CHARS = 256, 8 << 20  # bounds the text held while tokenizing

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


# ---- splitting -------------------------------------------------------------------------------------------

def split_of(doc_id: str, val_fraction: float, test_fraction: float, seed: int) -> str:
    """"train", "val" or "test" for one document, from a hash of (seed, id): needs no list of the corpus,
    and a document keeps its split whatever others are added or removed."""
    digest = hashlib.blake2b(f"{seed}\0{doc_id}".encode("utf-8"), digest_size=8).digest()
    draw = int.from_bytes(digest, "big") / 2**64
    if draw < test_fraction:
        return "test"
    return "val" if draw < test_fraction + val_fraction else "train"


def splitter(val_fraction: float, test_fraction: float, seed: int, config_file: str = "pipeline.yaml",
             field_prefix: str = "data") -> Callable[[str], str]:
    """`split_of` with its fractions checked and bound, the form pack_corpus takes."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(config_file, f"{field_prefix}.{name}", f"{value} is not in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(config_file, f"{field_prefix}.val_fraction",
                          f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no train")
    return lambda doc_id: split_of(doc_id, val_fraction, test_fraction, seed)


def split_documents(ids: Iterable[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    return {doc_id: split_of(doc_id, val_fraction, test_fraction, seed) for doc_id in ids}


# ---- tokenizer -------------------------------------------------------------------------------------------

def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A GPT-2 style byte-level BPE: every byte is in the alphabet, so any text encodes and decodes exactly;
    END_OF_TEXT is id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(f"vocab_size {vocab_size} cannot hold the 256 bytes and {END_OF_TEXT}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def save_hf_tokenizer(tokenizer: Any, folder: Path) -> Path:
    """tokenizer.json and tokenizer_config.json as transformers writes them, the files onnxruntime-genai reads."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT,
                                      unk_token=END_OF_TEXT)
    wrapped.save_pretrained(str(folder))
    return Path(folder) / "tokenizer.json"


def load_tokenizer(folder: Path, config_file: str = "pipeline.yaml", field: str = "teacher.model") -> Any:
    from tokenizers import Tokenizer

    file = Path(folder) / "tokenizer.json"
    if not file.is_file():
        raise ConfigError(config_file, field, f"{folder}: no tokenizer.json (a causal-lm model folder carries one)")
    return Tokenizer.from_file(str(file))


def end_of_text_id(tokenizer: Any, candidates: tuple[str, ...] = (END_OF_TEXT, "</s>", "<|end_of_text|>",
                                                                   "<eos>")) -> int:
    """The id that separates documents: ours, else the first of the names other model families use."""
    for token in candidates:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    raise ValueError(f"the tokenizer has none of the end-of-text tokens {', '.join(candidates)}")


def check_vocab_fits(tokenizer_vocab: int, model_vocab: int, file: str, field: str) -> None:
    if tokenizer_vocab > model_vocab:
        raise ConfigError(file, field, f"the tokenizer has {tokenizer_vocab} tokens but the model's embedding holds "
                                       f"{model_vocab}; use the model's own tokenizer or a smaller vocab_size")


# ---- packing ---------------------------------------------------------------------------------------------

def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def pack_corpus(documents: Iterable[tuple[str, str]], tokenizer: Any, block_size: int, out_dir: Path,
                split_of: Callable[[str], str], config_file: str = "pipeline.yaml", field_prefix: str = "data",
                required: tuple[str, ...] = ("train",), masked: bool = False) -> dict:
    """Tokenize each document, end it with the end-of-text id and append it to out_dir/{split}.tokens, its
    start offset to {split}.docs.npy; meta.json is written last and the old one removed first, so a killed
    run never leaves a meta.json describing partial files. Documents with no tokens are skipped.

    `masked` (prompt/response data): {split}.mask holds 1 for every token a loss predicts (a response's and its
    end-of-text) and 0 for a prompt's, the prompt and the response tokenized apart so the boundary is exact.
    Every split in `required`, and every split that received a document, must hold one block + 1 tokens.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype, eot = token_dtype(vocab_size), end_of_text_id(tokenizer)
    stats: dict[str, dict[str, int]] = {}
    with contextlib.ExitStack() as stack:
        streams: dict[str, Any] = {}
        masks: dict[str, Any] = {}
        offsets: dict[str, array] = {}
        for split, ids, text_bytes, prompt_tokens in _encoded(documents, tokenizer, split_of):
            if split not in streams:
                streams[split] = stack.enter_context(
                    stack.enter_context(atomic_path(out_dir / f"{split}.tokens")).open("wb"))
                if masked:
                    masks[split] = stack.enter_context(
                        stack.enter_context(atomic_path(out_dir / f"{split}.mask")).open("wb"))
                offsets[split] = array("q")
                stats[split] = {"tokens": 0, "documents": 0, "bytes": 0, "target_tokens": 0}
            offsets[split].append(stats[split]["tokens"])
            np.asarray(ids + [eot], dtype=dtype).tofile(streams[split])
            if masked:
                mask = np.ones(len(ids) + 1, dtype=np.uint8)
                mask[:prompt_tokens] = 0
                mask.tofile(masks[split])
            stats[split]["tokens"] += len(ids) + 1
            stats[split]["target_tokens"] += len(ids) + 1 - (prompt_tokens if masked else 0)
            stats[split]["documents"] += 1
            stats[split]["bytes"] += text_bytes
        _check_sizes(stats, block_size, required, config_file, field_prefix)
        for split, starts in offsets.items():
            with stack.enter_context(atomic_path(out_dir / f"{split}.docs.npy")).open("wb") as stream:
                np.save(stream, np.frombuffer(starts, dtype=np.int64))
    meta = {"dtype": dtype.name, "vocab_size": vocab_size, "end_of_text_id": eot, "block_size": block_size,
            "masked": masked,
            "splits": {split: {**stats[split], "blocks": (stats[split]["tokens"] - 1) // block_size}
                       for split in SPLITS if split in stats}}
    write_json(out_dir / META_FILE, meta)
    return meta


def _encoded(documents: Iterable[tuple[str, str]], tokenizer: Any,
             split_of: Callable[[str], str]) -> Iterator[tuple[str, list[int], int, int]]:
    """(split, token ids, UTF-8 bytes, prompt tokens) per non-empty document, tokenized in bounded batches (the
    tokenizer works in parallel across a batch)."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    batch: list[tuple[str, str]] = []
    chars = 0
    for doc_id, text in documents:
        batch.append((doc_id, text))
        chars += len(text)
        if len(batch) >= ENCODE_BATCH_DOCS or chars >= ENCODE_BATCH_CHARS:
            yield from _encode_batch(batch, encode, split_of)
            batch, chars = [], 0
    yield from _encode_batch(batch, encode, split_of)


def _encode_batch(batch: list[tuple[str, str]], encode: Callable,
                  split_of: Callable[[str], str]) -> Iterator[tuple[str, list[int], int, int]]:
    pieces = [piece for _, text in batch
              for piece in ((text.prompt, text.response) if isinstance(text, PromptedText) else (text,))]
    encodings = iter(encode(pieces, add_special_tokens=False))
    for doc_id, text in batch:
        prompt = next(encodings).ids if isinstance(text, PromptedText) else []
        ids = prompt + next(encodings).ids
        if ids:
            split = split_of(doc_id)
            if split not in SPLITS:
                raise ValueError(f"split_of({doc_id!r}) gave {split!r}, not one of {', '.join(SPLITS)}")
            yield split, ids, len(text.encode("utf-8")), len(prompt)


def _check_sizes(stats: dict[str, dict[str, int]], block_size: int, required: tuple[str, ...], config_file: str,
                 prefix: str) -> None:
    if not stats:
        raise ConfigError(config_file, f"{prefix}.path", "no text: every document is empty")
    for split in SPLITS:
        tokens = stats.get(split, {}).get("tokens", 0)
        if (split in stats or split in required) and tokens < block_size + 1:
            raise ConfigError(config_file, f"{prefix}.block_size", f"the {split} split holds {tokens} tokens, fewer "
                                                                   f"than one block of {block_size} + 1; use a "
                                                                   "smaller block_size or more text")


class TokenBlocks(torch.utils.data.Dataset):
    """Blocks of block_size + 1 tokens from a packed split, read through np.memmap (opened again in each
    DataLoader worker, never pickled): inputs are block[:-1], labels block[1:]. Blocks do not overlap, so
    every token but the first is predicted exactly once."""

    def __init__(self, folder: Path, split: str, block_size: int | None = None):
        self.folder, self.split = Path(folder), split
        meta_file = self.folder / META_FILE
        if not meta_file.is_file():
            raise ConfigError(str(meta_file), "", "no packed corpus here (pack_corpus writes it last)")
        meta = read_json(meta_file)
        if split not in meta["splits"]:
            raise ConfigError(str(meta_file), "splits", f"no {split} split (splits: {', '.join(meta['splits'])})")
        self.dtype, self.tokens = np.dtype(meta["dtype"]), int(meta["splits"][split]["tokens"])
        self.block_size = int(block_size or meta["block_size"])
        self.masked = bool(meta.get("masked"))
        self._data: np.ndarray | None = None
        self._mask: np.ndarray | None = None
        self.docs = np.load(self.folder / f"{split}.docs.npy")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None, "_mask": None}

    def _tokens(self) -> np.ndarray:
        if self._data is None:
            self._data = np.memmap(self.folder / f"{self.split}.tokens", dtype=self.dtype, mode="r",
                                   shape=(self.tokens,))
        return self._data

    def __len__(self) -> int:
        return max(0, (self.tokens - 1) // self.block_size)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} of {len(self)}")
        start = index * self.block_size
        return torch.from_numpy(self._tokens()[start:start + self.block_size + 1].astype(np.int64))

    def target_mask(self, index: int) -> torch.Tensor:
        """[block_size] bool: which of the block's labels (block[1:]) a loss and the perplexity count; all of them
        unless the corpus is prompt/response pairs (then a prompt's tokens are not predicted)."""
        if not self.masked:
            return torch.ones(self.block_size, dtype=torch.bool)
        if self._mask is None:
            self._mask = np.memmap(self.folder / f"{self.split}.mask", dtype=np.uint8, mode="r", shape=(self.tokens,))
        start = index * self.block_size
        return torch.from_numpy(self._mask[start + 1:start + self.block_size + 1].astype(bool))

    def document_of_block(self, index: int) -> int:
        """The index of the document the block starts in, to bootstrap perplexity by document."""
        return int(np.searchsorted(self.docs, index * self.block_size, side="right")) - 1
