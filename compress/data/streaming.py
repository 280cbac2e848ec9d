"""Image-file sources as streaming splits: lists of examples in memory, pixels decoded per batch.

The train split is `data.path`; val is `data.val_path` when the user has one (or the DatasetDict's
validation split), else a seeded stratified `val_fraction` of train; test likewise. Every image's
header is read once before anything trains, so a file that is not an image, or a mix of gray and
colour images, is refused (or, with `skip_bad_images`, skipped and counted) up front.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from compress.config import DataConfig
from compress.core.errors import UsageError
from compress.data.dataset import Dataset, check_statistics, seeded_split
from compress.data.records import BadImage, Records, TorchDatasetRecords, check, image_folder
from compress.data.splits import NO_LABEL, Decoding, StreamSplit, join
from compress.data.transforms import ConvertMode, eval_spec, eval_transform, geometry, train_transform

# Images decoded to measure the train split's mean and std when data.mean/std are not given.
STATISTICS_SAMPLE = 256


def open_records(cfg: DataConfig, path: Path, field: str, classes: list[str] | None = None) -> Records:
    """The Records of one image-file source at `path` (train's `classes` number a val/test set's labels)."""
    if cfg.source == "imagefolder":
        return image_folder(path, field, classes)
    if cfg.source == "manifest":
        from compress.data.manifest import manifest_records

        return manifest_records(path, cfg.columns, classes, field)
    if cfg.source == "hf":
        from compress.data.hf_source import hf_records

        return hf_records(path, cfg.columns, classes, field)
    from compress.data.shards import shard_records

    return shard_records(path, cfg.columns, classes, field)


def _named_split(cfg: DataConfig, names: tuple[str, ...], classes: list[str]) -> Records | None:
    """A split of the same Hugging Face DatasetDict (validation, test), when data.path is one."""
    if cfg.source != "hf":
        return None
    from compress.data.hf_source import hf_split

    for name in names:
        found = hf_split(cfg.path, name, cfg.columns, classes)
        if found is not None:
            return found
    return None


def _checked(records: Records, where: str, cfg: DataConfig, log: list[str]) -> tuple[Records, dict]:
    """Headers read; unreadable files dropped (and named in `log`) when skip_bad_images is on."""
    channels = 1 if cfg.grayscale else cfg.channels
    found = check(records, where, channels, cfg.skip_bad_images)
    if found["bad"]:
        log += [records.name(i) for i in found["bad"]]
        kept = np.setdiff1d(np.arange(len(records)), found["bad"])
        records = records.subset(kept)
    return records, found


def _index_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    kept, held, _, _ = seeded_split(np.arange(len(labels)), labels, fraction, seed)
    return np.sort(kept), np.sort(held)


def load_stream(cfg: DataConfig, seed: int) -> Dataset:
    skipped: list[str] = []
    records, found = _checked(open_records(cfg, cfg.path, "data.path"), f"{cfg.path}: data.path", cfg, skipped)
    classes = records.class_names
    test = val = None
    if cfg.test_path is not None:
        test, _ = _checked(open_records(cfg, cfg.test_path, "data.test_path", classes),
                           f"{cfg.test_path}: data.test_path", cfg, skipped)
    elif cfg.test_fraction is None:
        test = _named_split(cfg, ("test",), classes)
    if cfg.val_path is not None:
        val, _ = _checked(open_records(cfg, cfg.val_path, "data.val_path", classes), f"{cfg.val_path}: data.val_path",
                          cfg, skipped)
    else:
        val = _named_split(cfg, ("validation", "val", "valid"), classes)
    train = records
    if test is None and cfg.test_fraction is not None:
        rest, held = _index_split(train.labels, cfg.test_fraction, seed)
        test, train = train.subset(held), train.subset(rest)
    if val is None:
        fraction = cfg.val_fraction / (1 - cfg.test_fraction) if cfg.test_fraction and cfg.test_path is None \
            else cfg.val_fraction
        rest, held = _index_split(train.labels, fraction, seed)
        val, train = train.subset(held), train.subset(rest)
    _refuse_one_class(train, f"{cfg.path}: {'class folders' if cfg.source == 'imagefolder' else 'data.path'}")
    size = found["size"]
    try:
        spec = eval_spec(cfg, found["channels"], size)
    except ValueError:
        raise UsageError(f"{cfg.path}: data.image_size: the images differ in size (e.g. {train.name(0)}); set "
                         "data.image_size to resize them all") from None
    mean, std = _statistics(cfg, train, spec, seed)
    decoding = Decoding(eval_transform(spec, mean, std), train_transform(spec, cfg.augment, mean, std),
                        cfg.augment is not None, cfg.skip_bad_images, _workers(cfg),
                        (found["channels"], *spec["size"]))
    train_split = StreamSplit(train, decoding, seed)
    data = Dataset(train_split, StreamSplit(val, decoding, seed), list(classes), mean, std,
                   test=StreamSplit(test, decoding, seed) if test is not None else None, image_spec=spec,
                   skipped=skipped)
    _apply_transfer(data, cfg, seed, decoding)
    return data


def _apply_transfer(data: Dataset, cfg: DataConfig, seed: int, decoding: Decoding) -> None:
    """labeled_fraction keeps labels on part of train; a transfer source of image files adds unlabelled inputs."""
    transfer = cfg.transfer
    if transfer is None:
        return
    parts: list[StreamSplit] = []
    if transfer.labeled_fraction is not None and transfer.labeled_fraction < 1:
        labeled, unlabeled = _index_split(data.train.labels, 1 - transfer.labeled_fraction, seed)
        parts.append(data.train.subset(unlabeled).unlabelled())
        data.train = data.train.subset(labeled)
    if transfer.source is not None:
        if transfer.source != cfg.source:
            raise UsageError(f"data.transfer.source: '{transfer.source}' with a data.source of image files: use "
                             f"'{cfg.source}' for the transfer inputs too")
        extra = open_records(cfg, transfer.path, "data.transfer.path")
        extra, _ = _checked(extra, f"{transfer.path}: data.transfer.path", cfg, data.skipped)
        parts.append(StreamSplit(extra, decoding, seed, np.full(len(extra), NO_LABEL, dtype=np.int64)))
    if parts:
        data.transfer = parts[0] if len(parts) == 1 else join(parts[0], parts[1])


def _refuse_one_class(records: Records, where: str) -> None:
    present = np.unique(records.labels)
    if len(present) < 2:
        only = f"only class '{records.class_names[int(present[0])]}'" if len(present) else "no labels"
        raise UsageError(f"{where}: {only} in the train split; a classifier needs at least two classes")


def _workers(cfg: DataConfig) -> int:
    return cfg.workers if cfg.workers is not None else min(4, os.cpu_count() or 1)


def _statistics(cfg: DataConfig, train: Records, spec: dict, seed: int) -> tuple[list[float], list[float]]:
    """data.mean/std, or per-channel mean and std of a seeded sample of train images (eval geometry), or 0/1."""
    channels = 1 if spec["mode"] == "L" else 3
    if cfg.mean is not None:
        check_statistics(cfg.mean, cfg.std, channels)
        return list(cfg.mean), list(cfg.std)
    if not cfg.normalize:
        return [0.0] * channels, [1.0] * channels
    steps = [ConvertMode(spec["mode"]), geometry(spec)]
    order = np.random.default_rng(seed).permutation(len(train))[:STATISTICS_SAMPLE]
    pixels = []
    for index in np.sort(order):
        try:
            image = train.open(int(index))
        except BadImage:
            if cfg.skip_bad_images:
                continue
            raise
        for step in steps:
            image = step(image)
        values = np.asarray(image, dtype=np.float32) / 255.0
        pixels.append(values.reshape(-1, channels))
    values = np.concatenate(pixels)
    return [float(v) for v in values.mean(0)], [float(v) + 1e-6 for v in values.std(0)]


def load_user_dataset(cfg: DataConfig, dataset, seed: int) -> Dataset:
    """A torch Dataset from `module:function`: its items are the model's inputs as they are (no transforms)."""
    import torch

    where = f"data source '{cfg.source}'"
    records = TorchDatasetRecords(dataset, where)
    if not len(records):
        raise UsageError(f"{where}: the Dataset is empty")
    first = records.open(0)
    if not isinstance(first, torch.Tensor) or first.ndim != 3:
        raise UsageError(f"{where}: Dataset items must be (tensor of shape (C, H, W), label); got "
                         f"{type(first).__name__}{tuple(getattr(first, 'shape', ()))}")
    rest, held = _index_split(records.labels, cfg.val_fraction, seed)
    _refuse_one_class(records, where)

    def as_float(x):
        return torch.as_tensor(x, dtype=torch.float32)

    channels = int(first.shape[0])
    decoding = Decoding(as_float, as_float, False, False, _workers(cfg), tuple(first.shape))
    return Dataset(StreamSplit(records.subset(rest), decoding, seed), StreamSplit(records.subset(held), decoding, seed),
                   records.class_names, [0.0] * channels, [1.0] * channels)
