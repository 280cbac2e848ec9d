"""Data sources: `digits` (scikit-learn's bundled 8x8 digits), `npz`, `imagefolder`, `module:function`.

Every source yields float32 images (N, C, H, W) and int64 labels. The split into train/val (and a
held-out test split: `test_fraction`, or a separate `test_path`) is stratified and seeded;
normalisation statistics come from the train split only and travel with the run (deploy bundles
apply the same preprocessing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compress.config import DataConfig
from compress.core.errors import UsageError
from compress.data.sources import read_labelled, read_source
from compress.data.transfer import apply_transfer


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    class_names: list[str]
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    # Inputs without labels for KD (data.transfer); normalised like x_train. None when not configured.
    x_transfer: np.ndarray | None = None
    # A held-out test split (data.test_fraction / data.test_path) that neither trains nor chooses an epoch.
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def scored_split(self) -> tuple[str, np.ndarray, np.ndarray]:
        """The split a report's accuracy is measured on: test when there is one, else val (which chose the epochs)."""
        if self.x_test is not None and self.y_test is not None:
            return "test", self.x_test, self.y_test
        return "val", self.x_val, self.y_val

    def preprocessing(self) -> dict[str, Any]:
        """What a deployed runner must do to raw inputs: (x - mean) / std per channel."""
        return {"layout": "NCHW", "dtype": "float32", "mean": self.mean, "std": self.std}



def seeded_split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """(x_kept, x_held, y_kept, y_held): `fraction` of the samples held out, stratified when every class can be."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    return tuple(train_test_split(x, y, test_size=fraction, random_state=seed, stratify=stratify))


def held_out_test(cfg: DataConfig, x: np.ndarray, y: np.ndarray, names: list[str],
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, float]:
    """(x, y left for train and val, x_test, y_test, val fraction of what is left): both fractions are of the whole."""
    if cfg.test_path is not None:
        x_test, y_test, test_names = read_source(cfg.model_copy(update={"path": cfg.test_path}))
        # An imagefolder numbers classes by sorted folder name: a missing or extra folder would shift every label.
        # An npz's labels are its own numbers: a test set may lack the last classes.
        test_names = list(test_names)
        same = test_names == list(names) or (cfg.source == "npz" and list(names[:len(test_names)]) == test_names)
        if not same:
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
    x, y, names = read_labelled(cfg)
    x, y, x_test, y_test, val_fraction = held_out_test(cfg, x, y, names, seed)
    x_train, x_val, y_train, y_val = seeded_split(x, y, val_fraction, seed)
    data = Dataset(x_train, y_train, x_val, y_val, names)
    channels = x.shape[1]
    if cfg.normalize:
        mean = x_train.mean(axis=(0, 2, 3))
        std = x_train.std(axis=(0, 2, 3)) + 1e-6
        data.x_train = ((x_train - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
        data.x_val = ((x_val - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
        data.mean, data.std = mean.tolist(), std.tolist()
    else:
        data.mean, data.std = [0.0] * channels, [1.0] * channels
    mean_, std_ = np.asarray(data.mean, np.float32), np.asarray(data.std, np.float32)
    if x_test is not None:
        data.x_test = ((x_test - mean_[None, :, None, None]) / std_[None, :, None, None]).astype(np.float32)
        data.y_test = y_test
    apply_transfer(data, cfg.transfer, seed, lambda x: (x - mean_[None, :, None, None]) / std_[None, :, None, None])
    return data
