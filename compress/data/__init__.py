"""Data sources: `digits` (scikit-learn's bundled 8x8 digits), `npz`, `imagefolder`, `module:function`.

Every source yields float32 images (N, C, H, W) and int64 labels. The split into train/val is
stratified and seeded; normalisation statistics come from the train split only and travel with the
run (deploy bundles apply the same preprocessing).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.config import DataConfig
from compress.errors import UsageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


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


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return x, bunch.target.astype(np.int64), [str(c) for c in bunch.target_names]


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: cannot read npz: {error}") from None
    missing = [k for k in ("x", "y") if k not in arrays.files]
    if missing:
        raise UsageError(f"{path}: npz needs arrays 'x' and 'y', missing {', '.join(missing)}")
    x, y = arrays["x"].astype(np.float32), arrays["y"].astype(np.int64)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or len(x) != len(y):
        raise UsageError(f"{path}: x must be (N,H,W), (N,C,H,W) or (N,H,W,C) with N == len(y); got {x.shape}, {y.shape}")
    names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays.files else None
    return x, y, names or [str(i) for i in range(int(y.max()) + 1)]


def _imagefolder(path: Path, image_size: int | None, grayscale: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image

    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    if not classes:
        raise UsageError(f"{path}: imagefolder needs one sub-folder per class")
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((path / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(file) as img:
                img = img.convert("L" if grayscale else "RGB")
                if image_size:
                    img = img.resize((image_size, image_size), Image.BILINEAR)
                images.append(np.asarray(img, dtype=np.float32) / 255.0)
            labels.append(label)
    if not images:
        raise UsageError(f"{path}: no images found")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise UsageError(f"{path}: images differ in size {sorted(shapes)[:2]}; set data.image_size")
    x = np.stack(images)
    x = x[:, None] if grayscale else x.transpose(0, 3, 1, 2)
    return x, np.asarray(labels, dtype=np.int64), classes


def _user_function(source: str, kwargs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    module_name, _, attr = source.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"data source '{source}': {error}") from None
    result = function(**kwargs)
    if isinstance(result, dict):
        x, y, names = result["x"], result["y"], result.get("class_names")
    else:
        x, y, *rest = result
        names = rest[0] if rest else None
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
    if x.ndim == 3:
        x = x[:, None]
    return x, y, [str(n) for n in names] if names is not None else [str(i) for i in range(int(y.max()) + 1)]


def read_source(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if cfg.source == "digits":
        return _digits()
    if cfg.source == "npz":
        return _npz(cfg.path)
    if cfg.source == "imagefolder":
        return _imagefolder(cfg.path, cfg.image_size, cfg.grayscale)
    return _user_function(cfg.source, cfg.kwargs)


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
    from compress.data.transfer import apply_transfer

    mean_, std_ = np.asarray(data.mean, np.float32), np.asarray(data.std, np.float32)
    apply_transfer(data, cfg.transfer, seed, lambda x: (x - mean_[None, :, None, None]) / std_[None, :, None, None])
    return data
