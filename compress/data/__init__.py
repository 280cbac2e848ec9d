"""Data sources -> train/val(/test, transfer) splits that every stage iterates.

Array sources (`digits`, `npz`, arrays from `module:function`) are normalised with train-split
statistics and held in memory (an uncompressed npz stays memory-mapped). Image-file sources
(`imagefolder`, `manifest`, `hf`, `webdataset`, a torch Dataset from `module:function`) are read
one image at a time (compress.data.streaming). Splits are stratified and seeded; what a device must
repeat on raw inputs travels with the run (`Dataset.preprocessing()`, shipped in every bundle).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.config import DataConfig
from compress.core.errors import UsageError
from compress.data.dataset import Dataset, check_statistics, seeded_split
from compress.data.sources import call_user_function, read_labelled, read_source
from compress.data.splits import ArraySplit, MappedSplit
from compress.data.transfer import apply_transfer


def held_out_test(cfg: DataConfig, x: np.ndarray, y: np.ndarray, names: list[str],
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, float]:
    """(x, y left for train and val, x_test, y_test, val fraction of what is left): both fractions are of the whole."""
    if cfg.test_path is not None:
        x_test, y_test, test_names = read_source(cfg.model_copy(update={"path": cfg.test_path}))
        # An npz's labels are its own numbers: a test set may lack the last classes.
        test_names = list(test_names)
        if not (test_names == list(names) or list(names[:len(test_names)]) == test_names):
            raise UsageError(f"{cfg.test_path}: data.test_path: classes {list(test_names)[:5]} differ from "
                             f"data.path's {list(names)[:5]}")
        if x_test.shape[1:] != x.shape[1:]:
            raise UsageError(f"{cfg.test_path}: data.test_path: inputs of shape {x_test.shape[1:]}, data.path's are "
                             f"{x.shape[1:]}")
        return x, y, x_test, y_test, cfg.val_fraction
    if cfg.test_fraction is None:
        return x, y, None, None, cfg.val_fraction
    x, x_test, y, y_test = seeded_split(x, y, cfg.test_fraction, seed)
    return x, y, x_test, y_test, cfg.val_fraction / (1 - cfg.test_fraction)


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    if cfg.streams:
        from compress.data.streaming import load_stream

        return load_stream(cfg, seed)
    if ":" in cfg.source:
        result = call_user_function(cfg.source, cfg.kwargs)
        if _is_torch_dataset(result):
            from compress.data.streaming import load_user_dataset

            return load_user_dataset(cfg, result, seed)
        return _array_dataset(cfg, *read_labelled(cfg, result), seed)
    return _array_dataset(cfg, *read_labelled(cfg), seed)


def _is_torch_dataset(result: Any) -> bool:
    from torch.utils.data import Dataset as TorchDataset

    return isinstance(result, TorchDataset)


def _array_dataset(cfg: DataConfig, x: np.ndarray, y: np.ndarray, names: list[str], seed: int) -> Dataset:
    if isinstance(x, np.memmap) and cfg.test_path is None:
        return _mapped_dataset(cfg, x, y, names, seed)
    x = np.asarray(x, dtype=np.float32)
    x, y, x_test, y_test, val_fraction = held_out_test(cfg, x, y, names, seed)
    x_train, x_val, y_train, y_val = seeded_split(x, y, val_fraction, seed)
    mean, std = _statistics(cfg, x.shape[1], lambda: x_train)

    def normalise(a: np.ndarray) -> np.ndarray:
        return ((a - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)

    if cfg.normalize or cfg.mean is not None:
        x_train, x_val = normalise(x_train), normalise(x_val)
    data = Dataset(ArraySplit(x_train, y_train), ArraySplit(x_val, y_val), names,
                   [float(v) for v in mean], [float(v) for v in std])
    if x_test is not None:
        data.test = ArraySplit(normalise(x_test), y_test)
    apply_transfer(data, cfg.transfer, seed, normalise)
    return data


def _statistics(cfg: DataConfig, channels: int, train_values) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std): data.mean/std, or measured on `train_values()` (normalize), or 0 and 1."""
    if cfg.mean is not None:
        mean, std = np.asarray(cfg.mean, np.float32), np.asarray(cfg.std, np.float32)
    elif cfg.normalize:
        values = train_values()
        mean, std = values.mean(axis=(0, 2, 3)), values.std(axis=(0, 2, 3)) + 1e-6
    else:
        mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    check_statistics(mean, std, channels)
    return mean, std


def _mapped_dataset(cfg: DataConfig, x: np.memmap, y: np.ndarray, names: list[str], seed: int) -> Dataset:
    """An npz too big to copy: splits are row indices into the map; statistics from a seeded sample of train."""
    rows = np.arange(len(y))
    rows, y, test_rows, y_test, val_fraction = held_out_test(cfg.model_copy(update={"test_path": None}), rows, y,
                                                             names, seed)
    train_rows, val_rows, y_train, y_val = seeded_split(rows, y, val_fraction, seed)
    sample = np.sort(np.random.default_rng(seed).permutation(train_rows)[:4096])
    mean, std = _statistics(cfg, x.shape[1], lambda: np.asarray(x[sample], dtype=np.float32))
    data = Dataset(MappedSplit(x, train_rows, y_train, mean, std), MappedSplit(x, val_rows, y_val, mean, std), names,
                   [float(v) for v in mean], [float(v) for v in std])
    if test_rows is not None:
        data.test = MappedSplit(x, test_rows, y_test, mean, std)
    if cfg.transfer is not None:
        raise UsageError(f"{cfg.path}: data.transfer: a memory-mapped npz takes no transfer set yet; store x "
                         "compressed (np.savez_compressed) to read it into memory")
    return data
