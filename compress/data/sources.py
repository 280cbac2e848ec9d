"""Readers of the array sources: `digits`, `npz`, `module:function` (and image folders read whole for a
transfer set) -> (x, y, class names).

Every source yields float32 images (N, C, H, W) and int64 labels 0..K-1 of at least two classes:
a bad file or label is refused here, naming it, before any stage has trained on it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from compress.config import DataConfig
from compress.core.errors import UsageError
from compress.data.records import IMAGE_SUFFIXES


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return x, bunch.target.astype(np.int64), [str(c) for c in bunch.target_names]


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from compress.data.npz_mmap import npz_arrays

    try:
        arrays = npz_arrays(path)
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: cannot read npz: {error}") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise UsageError(f"{path}: npz needs arrays 'x' and 'y', missing {', '.join(missing)}")
    x, y = arrays["x"], np.asarray(arrays["y"]).astype(np.int64)
    mapped = isinstance(x, np.memmap) and x.dtype == np.float32 and x.ndim == 4 and x.shape[1] in (1, 3)
    if not mapped:  # a map is kept only where it needs no copy: float32 NCHW
        x = np.asarray(x).astype(np.float32)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or len(x) != len(y):
        raise UsageError(f"{path}: x must be (N,H,W), (N,C,H,W) or (N,H,W,C) with N == len(y); got {x.shape}, {y.shape}")
    names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else None
    check_finite(f"{path}: x", x)
    return x, y, names or numbered_classes(y)


# Inputs are checked for NaN and inf this many bytes at a time: a memory-mapped x is read, never copied whole.
FINITE_CHUNK_BYTES = 64 << 20


def check_finite(where: str, x: np.ndarray) -> None:
    """Refuse inputs holding NaN or inf, naming the first such sample and how many there are.

    A model trained on them learns NaN, and replaces finished stages before the export finds out.
    """
    if not np.issubdtype(x.dtype, np.floating) or not len(x):
        return
    rows = max(1, FINITE_CHUNK_BYTES // max(1, x[0].nbytes))
    first, bad = None, 0
    for start in range(0, len(x), rows):
        chunk = np.asarray(x[start:start + rows])
        finite = np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
        bad += int(len(finite) - finite.sum())
        if first is None and not finite.all():
            first = start + int(np.argmin(finite))
    if first is not None:
        kind = "NaN" if np.isnan(x[first]).any() else "inf"
        raise UsageError(f"{where}: sample {first} holds {kind} ({bad:,} of {len(x):,} samples hold NaN or inf); "
                         "fix or drop them")


def numbered_classes(y: np.ndarray) -> list[str]:
    """Class names "0".."K-1" when the source gives none."""
    return [str(i) for i in range(int(y.max()) + 1)] if len(y) else []


def _imagefolder(path: Path, image_size: int | None, grayscale: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    if not classes:
        raise UsageError(f"{path}: imagefolder needs one sub-folder per class")
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((path / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            images.append(_read_image(file, image_size, grayscale))
            labels.append(label)
    if not images:
        raise UsageError(f"{path}: no images found")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise UsageError(f"{path}: images differ in size {sorted(shapes)[:2]}; set data.image_size")
    x = np.stack(images)
    x = x[:, None] if grayscale else x.transpose(0, 3, 1, 2)
    return x, np.asarray(labels, dtype=np.int64), classes


def _read_image(file: Path, image_size: int | None, grayscale: bool) -> np.ndarray:
    """One image as float32 in [0, 1]; a corrupt or truncated file is named, not a traceback."""
    from PIL import Image

    try:
        with Image.open(file) as img:
            img = img.convert("L" if grayscale else "RGB")
            if image_size:
                img = img.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, ValueError, Image.DecompressionBombError) as error:  # UnidentifiedImageError is an OSError
        raise UsageError(f"{file}: not a readable image ({error}); fix or remove it") from None


def check_labels(where: str, y: np.ndarray, names: list[str]) -> None:
    """Labels are class indices of at least two classes: one class would score top-1 1.0 and mean nothing."""
    if len(y) and int(y.min()) < 0:
        raise UsageError(f"{where}: label {int(y.min())} is negative; labels are class indices 0..K-1")
    if len(y) and int(y.max()) >= len(names):
        raise UsageError(f"{where}: label {int(y.max())} but only {len(names)} class names ({', '.join(names[:5])}"
                         f"{', ...' if len(names) > 5 else ''})")
    present = np.unique(y)
    if len(present) < 2:
        only = f"only class '{names[int(present[0])]}'" if len(present) else "no labels"
        raise UsageError(f"{where}: {only}; a classifier needs at least two classes")


def call_user_function(source: str, kwargs: dict[str, Any]) -> Any:
    """What `package.module:function` returns: arrays (x, y[, names]), a dict of them, or a torch Dataset."""
    module_name, _, attr = source.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"data source '{source}': {error}") from None
    return function(**kwargs)


def _user_arrays(result: Any, source: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if isinstance(result, dict):
        x, y, names = result["x"], result["y"], result.get("class_names")
    else:
        x, y, *rest = result
        names = rest[0] if rest else None
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
    if x.ndim == 3:
        x = x[:, None]
    check_finite(f"data source '{source}': x", x)
    return x, y, [str(n) for n in names] if names is not None else numbered_classes(y)


def read_source(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Inputs and labels as the source holds them (the transfer set's labels, if any, are not read)."""
    if cfg.source == "digits":
        return _digits()
    if cfg.source == "npz":
        return _npz(cfg.path)
    if cfg.source == "imagefolder":
        return _imagefolder(cfg.path, cfg.image_size, cfg.grayscale)
    return _user_arrays(call_user_function(cfg.source, cfg.kwargs), cfg.source)


def read_labelled(cfg: DataConfig, result: Any = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The labelled data set: `read_source` (or a function's `result` already called) with its labels checked."""
    x, y, names = read_source(cfg) if result is None else _user_arrays(result, cfg.source)
    where = {"npz": f"{cfg.path}: y", "imagefolder": f"{cfg.path}: class folders"}.get(
        cfg.source, f"data source '{cfg.source}': y")
    check_labels(where, y, names)
    return x, y, names
