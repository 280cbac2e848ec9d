"""Data sources: `digits` (scikit-learn's bundled 8x8 digits), `npz`, `imagefolder`, `module:function`.

Every source yields float32 images (N, C, H, W) and int64 labels. The split into train/val is
stratified and seeded; normalisation statistics come from the train split only and travel with the
run (deploy bundles apply the same preprocessing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compress.config import DataConfig
from compress.data.sources import read_source
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

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def preprocessing(self) -> dict[str, Any]:
        """What a deployed runner must do to raw inputs: (x - mean) / std per channel."""
        return {"layout": "NCHW", "dtype": "float32", "mean": self.mean, "std": self.std}



def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    from sklearn.model_selection import train_test_split

    x, y, names = read_source(cfg)
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=cfg.val_fraction, random_state=seed, stratify=stratify
    )
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
    apply_transfer(data, cfg.transfer, seed, lambda x: (x - mean_[None, :, None, None]) / std_[None, :, None, None])
    return data
