"""What the data files of a pipeline are, cheaply: a fingerprint for the cache keys, and counts per class.

A stage's cache key sees its config, not the files that config names: without this, images added
to or replaced in an image folder (or a rewritten npz) left every stage cached on the old data. The
fingerprint hashes the list of files with their sizes and modification times (no file is read, so
it stays cheap for hundreds of thousands of images); a source without files (digits, a
`module:function`) has none, and its keys are what they always were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compress.config import DataConfig
from compress.core.fileio import sha256_json
from compress.data.records import IMAGE_SUFFIXES


def data_paths(cfg: DataConfig) -> dict[str, Path]:
    """The files and folders the data section names, by field."""
    named = {"data.path": cfg.path, "data.val_path": cfg.val_path, "data.test_path": cfg.test_path,
             "data.transfer.path": cfg.transfer.path if cfg.transfer is not None else None,
             "data.text.tokenizer": cfg.text.tokenizer if cfg.text is not None else None}
    return {field: Path(path) for field, path in named.items() if path is not None}


def _entries(root: Path) -> list[tuple[str, int, int]]:
    if "{" in root.name:  # webdataset shards named by a brace pattern
        from braceexpand import braceexpand

        files = [Path(p) for p in braceexpand(str(root)) if Path(p).is_file()]
        return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    entries = []
    for file in files:
        stat = file.stat()
        entries.append((str(file.relative_to(root)) if file != root else file.name, stat.st_size, stat.st_mtime_ns))
    return entries


def _listed_files(cfg: DataConfig, field: str, path: Path) -> list[tuple[str, int, int]]:
    """The images a manifest names (they live outside it: replacing one must change the fingerprint too)."""
    from compress.data.manifest import manifest_records

    records = manifest_records(path, cfg.columns, None, field)
    return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in records.files]


def fingerprint(cfg: DataConfig) -> dict[str, Any] | None:
    """{"sha256": of every file's name, size and mtime, "files": count}; None for a source without files."""
    listed = {field: _entries(path) for field, path in data_paths(cfg).items() if path.exists() or "{" in path.name}
    if cfg.source == "manifest":
        listed.update({f"{field} images": _listed_files(cfg, field, path) for field, path in data_paths(cfg).items()
                       if field != "data.transfer.path" and path.is_file()})
    if not listed:
        return None
    return {"sha256": sha256_json(listed)[:16], "files": sum(len(entries) for entries in listed.values())}


def class_counts(cfg: DataConfig) -> dict[str, int] | None:
    """Samples per class of the main source, read without decoding anything; None where that needs the data."""
    if cfg.source == "imagefolder" and cfg.path is not None and cfg.path.is_dir():
        return {d.name: sum(1 for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
                for d in sorted(cfg.path.iterdir()) if d.is_dir()}
    if cfg.source in ("manifest", "hf", "webdataset") and cfg.path is not None:
        from compress.data.streaming import open_records

        records = open_records(cfg, cfg.path, "data.path")  # lists and labels only: no image is decoded
        counts = np.bincount(records.labels, minlength=len(records.class_names))
        return {name: int(n) for name, n in zip(records.class_names, counts)}
    if cfg.source == "npz" and cfg.path is not None and cfg.path.is_file():
        with np.load(cfg.path, allow_pickle=False) as arrays:
            if "y" not in arrays.files:
                return None
            labels, counts = np.unique(arrays["y"], return_counts=True)
        return {str(int(label)): int(count) for label, count in zip(labels, counts)}
    if cfg.source == "digits":
        from sklearn.datasets import load_digits

        labels, counts = np.unique(load_digits().target, return_counts=True)
        return {str(int(label)): int(count) for label, count in zip(labels, counts)}
    return None
