"""The transfer set: inputs the student sees only through the teacher.

`data.transfer.labeled_fraction` keeps labels on a seeded, stratified part of the train split and
moves the rest of its inputs (without labels) to the transfer set; `data.transfer.source` adds
inputs from any data source (its labels, if any, are dropped). KD losses run on every transfer
input, cross-entropy only where a label exists: the teacher teaches from data nobody labelled.
"""

from __future__ import annotations

import numpy as np

from compress.config import DataConfig, TransferConfig
from compress.core.errors import UsageError
from compress.data.sources import read_source
from compress.data.splits import NO_LABEL, ArraySplit


def split_labels(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """(x_labeled, y_labeled, x_unlabeled): at least one labelled example per class when possible."""
    from sklearn.model_selection import train_test_split

    if fraction >= 1:
        return x, y, x[:0]
    counts = np.bincount(y)
    keep = max(int(round(fraction * len(y))), int((counts > 0).sum()))
    stratify = y if counts[counts > 0].min() >= 2 and keep < len(y) else None
    if keep >= len(y):
        return x, y, x[:0]
    x_lab, x_unlab, y_lab, _ = train_test_split(x, y, train_size=keep, random_state=seed, stratify=stratify)
    return x_lab, y_lab, x_unlab


def read_transfer_inputs(cfg: TransferConfig) -> np.ndarray:
    source = DataConfig(source=cfg.source, path=cfg.path, image_size=cfg.image_size, grayscale=cfg.grayscale,
                        kwargs=cfg.kwargs)
    x, _, _ = read_source(source)
    return x


def apply_transfer(data, cfg: TransferConfig | None, seed: int, normalize) -> None:
    """Fill `data.transfer` (arrays normalised like the train split, labels NO_LABEL); shrink the labelled train split."""
    if cfg is None:
        return
    parts = []
    if cfg.labeled_fraction is not None:
        x_lab, y_lab, unlabeled = split_labels(data.train.x, data.train.labels, cfg.labeled_fraction, seed)
        data.train = ArraySplit(x_lab, y_lab)
        parts.append(unlabeled)
    if cfg.source is not None:
        extra = read_transfer_inputs(cfg)
        if extra.shape[1:] != data.train.x.shape[1:]:
            raise UsageError(f"data.transfer: inputs of shape {tuple(extra.shape[1:])} do not match the training "
                             f"inputs {tuple(data.train.x.shape[1:])}; set data.transfer.image_size/grayscale")
        parts.append(normalize(extra))
    if parts:
        x = np.concatenate(parts).astype(np.float32)
        data.transfer = ArraySplit(x, np.full(len(x), NO_LABEL, dtype=np.int64))
