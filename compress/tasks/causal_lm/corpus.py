"""A language model's corpus: split documents (read by compress.tasks.causal_lm.documents), train a byte-level
BPE, pack token ids on disk.

Everything streams: documents are read one at a time and token ids are appended to raw files per split,
so memory stays flat however large the corpus. Splits are drawn per document from a hash of its id, so a
document's text never lands in two splits and adding a document never moves another.
"""

from __future__ import annotations

import contextlib
import hashlib
from array import array
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from compress.core.errors import ConfigError
from compress.core.fileio import atomic_path, read_json, write_json
from compress.tasks.causal_lm.documents import PromptedText

END_OF_TEXT = "<|endoftext|>"
SPLITS = ("train", "val", "test")
META_FILE = "meta.json"
ENCODE_BATCH_DOCS, ENCODE_BATCH_CHARS = 256, 8 << 20  # bounds the text held while tokenizing


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
