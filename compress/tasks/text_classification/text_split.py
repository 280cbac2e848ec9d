"""Texts as a Split (compress.data.splits): inputs are dicts of int64 arrays, each batch padded to its longest row.

A batch is `{"input_ids", "attention_mask", "token_type_ids"}`, each (n, L) with L the longest text of
that batch (at most max_length), the way BERT-style models are trained and scored; `inputs(...,
pad_to=max_length)` gives the one fixed shape an export or a benchmark wants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from compress.data.splits import NO_LABEL, Split
from compress.tasks.text_classification.text import TextRecords
from compress.tasks.text_classification.tokenizer import pad_id
from deploy.runner.preprocess_text import padded, token_rows


@dataclass
class Tokens:
    """Every text's tokens end to end (ids int32, type ids int8) and where each text's begin (n + 1 offsets)."""

    ids: np.ndarray
    type_ids: np.ndarray
    offsets: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray, type_ids: np.ndarray, lengths: np.ndarray) -> "Tokens":
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(ids.astype(np.int32), type_ids.astype(np.int8), offsets)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def rows(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, type_ids, lengths) of the texts at `indices`, in that order, end to end."""
        indices = np.asarray(indices, dtype=np.int64)
        starts = self.offsets[indices]
        lengths = self.offsets[indices + 1] - starts
        # token k of the result is token (k - where its row begins in the result) of its row in self
        begins = np.cumsum(lengths) - lengths
        positions = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - begins, lengths)
        return self.ids[positions], self.type_ids[positions], lengths

    def subset(self, indices: Sequence[int]) -> "Tokens":
        return Tokens.of(*self.rows(indices))


class TextSplit(Split):
    """Labelled texts, tokenised once, up front, when the split is made.

    Once rather than per batch: the token ids of 100k short texts are a few MB (int32, end to end),
    tokenising them takes a second or two in `tokenizers`' Rust threads, and then no epoch
    tokenises again and no loader workers are needed (a batch is a gather and a pad in numpy).
    The raw texts are kept too (`texts_at`), for what a device is given: raw text, not ids.
    Nothing here is random, so `augments` is False and a teacher-output cache stays valid.
    """

    def __init__(self, texts: Sequence[str], labels: np.ndarray, tokenizer: Any, max_length: int,
                 tokens: Tokens | None = None):
        self.texts = list(texts)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        self.tokenizer, self.max_length, self.pad_id = tokenizer, int(max_length), pad_id(tokenizer)
        self.tokens = tokens if tokens is not None else Tokens.of(*token_rows(tokenizer, self.texts, self.max_length))

    @classmethod
    def from_records(cls, records: TextRecords, tokenizer: Any, max_length: int) -> "TextSplit":
        return cls(records.texts, records.labels, tokenizer, max_length)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(max_length,): the longest a row can be; a batch is as long as its longest text."""
        return (self.max_length,)

    def texts_at(self, indices: Sequence[int]) -> list[str]:
        return [self.texts[int(i)] for i in indices]

    def inputs(self, indices: Sequence[int], pad_to: int | None = None) -> dict[str, np.ndarray]:
        """int64 (n, L) arrays of the texts at `indices`: L their longest, or `pad_to` (at least max_length)."""
        if pad_to is not None and pad_to < self.max_length:
            raise ValueError(f"pad_to {pad_to} is shorter than max_length {self.max_length}")
        return padded(*self.tokens.rows(indices), self.pad_id, pad_to)

    def batches(self, batch_size: int = 256) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        for start in range(0, len(self.labels), batch_size):
            stop = min(start + batch_size, len(self.labels))
            yield self.inputs(range(start, stop)), self.labels[start:stop]

    def train_loader(self, sampler: Sampler, batch_size: int, seed: int, epoch: int,
                     device: torch.device) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]]:
        """(inputs on device, labels on device, indices on CPU) per batch, in the sampler's order.

        `seed` and `epoch` change nothing: texts are not augmented.
        """
        order = np.fromiter((int(i) for i in sampler), dtype=np.int64)
        pin = device.type == "cuda"
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            arrays = self.inputs(indices)
            inputs = {name: _to_device(array, device, pin) for name, array in arrays.items()}
            yield inputs, _to_device(self.labels[indices], device, pin), torch.from_numpy(indices)

    def subset(self, indices: Sequence[int]) -> "TextSplit":
        indices = np.asarray(indices, dtype=np.int64)
        return TextSplit(self.texts_at(indices), self.labels[indices], self.tokenizer, self.max_length,
                         self.tokens.subset(indices))

    def unlabelled(self) -> "TextSplit":
        return TextSplit(self.texts, np.full(len(self.labels), NO_LABEL, dtype=np.int64), self.tokenizer,
                         self.max_length, self.tokens)


def _to_device(array: np.ndarray, device: torch.device, pin: bool) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.pin_memory().to(device, non_blocking=True) if pin else tensor.to(device)


def join_texts(train: TextSplit, transfer: TextSplit | None) -> TextSplit:
    """The training texts with the transfer texts (labels NO_LABEL) after them, as splits.join does for images."""
    if transfer is None or not len(transfer):
        return train
    same_tokenizer = transfer.tokenizer is train.tokenizer or transfer.tokenizer.to_str() == train.tokenizer.to_str()
    if transfer.max_length != train.max_length or not same_tokenizer:
        raise ValueError("the transfer texts must be tokenised as the training texts are (tokenizer, max_length)")
    tokens = Tokens(np.concatenate([train.tokens.ids, transfer.tokens.ids]),
                    np.concatenate([train.tokens.type_ids, transfer.tokens.type_ids]),
                    np.concatenate([train.tokens.offsets, transfer.tokens.offsets[1:] + train.tokens.offsets[-1]]))
    return TextSplit(train.texts + transfer.texts, np.concatenate([train.labels, transfer.labels]), train.tokenizer,
                     train.max_length, tokens)
