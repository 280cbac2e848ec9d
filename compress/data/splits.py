"""A split (train, val, test, transfer) as something to iterate, never as one array in memory.

Two kinds behind one interface:
- `ArraySplit`: arrays (digits, npz, a function's arrays); an npz's `x` stays memory-mapped.
- `StreamSplit`: raw images decoded one at a time in DataLoader workers (compress.data.records)
  through a torchvision.transforms.v2 pipeline, so peak memory does not grow with the data set.

Every consumer asks for what it needs: `inputs(indices)` for a small sample (calibration, parity,
a bundle's val sample), `batches()` to score a whole split in order, `train_loader()` to train.
Training randomness is a function of (seed, epoch, index), so workers, persistent workers and a
resumed run all see the same augmented images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, default_collate

from compress.data.records import BadImage, ConcatRecords, Records

NO_LABEL = -1


class Split:
    labels: np.ndarray  # int64, NO_LABEL where an input has no label (the transfer set)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.inputs([0]).shape[1:])

    @property
    def augments(self) -> bool:
        """Whether training inputs change from epoch to epoch (then a teacher-output cache is invalid)."""
        return False

    def inputs(self, indices: Sequence[int]) -> np.ndarray:
        """float32 (n, C, H, W) of the examples at `indices`, as evaluated (no augmentation)."""
        raise NotImplementedError

    def batches(self, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(inputs, labels) of every example in order, as evaluated, `batch_size` at a time."""
        raise NotImplementedError

    def sample(self, order: Sequence[int], count: int) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, labels) of the first `count` examples of `order` that can be read (all can, but for a
        stream that skips bad images): calibration sets, parity checks and a bundle's val sample."""
        chosen = np.asarray(order, dtype=np.int64)[:count]
        return self.inputs(chosen), self.labels[chosen]

    def train_loader(self, sampler: Sampler, batch_size: int, seed: int, epoch: int,
                     device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(x on device, labels on device, indices on CPU) per batch, in the sampler's order, augmented."""
        raise NotImplementedError

    def subset(self, indices: Sequence[int]) -> "Split":
        raise NotImplementedError

    def close(self) -> None:
        """Release what training held (loader workers); the split stays usable."""

    def unlabelled(self) -> "Split":
        """The same inputs with every label NO_LABEL (for the transfer set)."""
        raise NotImplementedError


class ArraySplit(Split):
    """Inputs already preprocessed (normalised), held as an array or a memory map."""

    def __init__(self, x: np.ndarray, labels: np.ndarray, augment: Callable | None = None):
        self.x, self.labels = x, np.asarray(labels, dtype=np.int64)
        # augment(x_batch_on_device, generator) -> x (compress.distill.train's pad-crop and flip)
        self.augment = augment
        self._on_device: tuple[torch.device, torch.Tensor] | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def augments(self) -> bool:
        return self.augment is not None

    def inputs(self, indices: Sequence[int]) -> np.ndarray:
        return np.ascontiguousarray(self.x[np.asarray(indices, dtype=np.int64)], dtype=np.float32)

    def batches(self, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self.labels), batch_size):
            yield (np.ascontiguousarray(self.x[start:start + batch_size], dtype=np.float32),
                   self.labels[start:start + batch_size])

    def train_loader(self, sampler, batch_size, seed, epoch, device):
        order = torch.tensor(list(sampler), dtype=torch.long)
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        x_all = self._device_copy(device)
        y_all = torch.as_tensor(self.labels).to(device)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if x_all is not None:
                idx_dev = idx.to(device)
                x = x_all[idx_dev]
            else:  # a memory map larger than memory: read each batch (sorted, for the page cache)
                x = torch.from_numpy(self.inputs(idx.numpy())).to(device, non_blocking=True)
            if self.augment is not None:
                x = self.augment(x, generator)
            yield x, y_all[idx.to(device)], idx

    def _device_copy(self, device: torch.device) -> torch.Tensor | None:
        """The whole array on the training device, once; None for a memory map (it may not fit)."""
        if self._on_device is None or self._on_device[0] != device:
            self._on_device = (device, torch.as_tensor(np.ascontiguousarray(self.x, dtype=np.float32)).to(device))
        return self._on_device[1]

    def subset(self, indices: Sequence[int]) -> "ArraySplit":
        indices = np.asarray(indices, dtype=np.int64)
        return ArraySplit(self.x[indices], self.labels[indices], self.augment)

    def unlabelled(self) -> "ArraySplit":
        return ArraySplit(self.x, np.full(len(self.labels), NO_LABEL, dtype=np.int64), self.augment)


class MappedSplit(ArraySplit):
    """Rows of a memory-mapped array (an uncompressed npz's x), normalised per batch: nothing is copied whole."""

    def __init__(self, x: np.memmap, rows: np.ndarray, labels: np.ndarray, mean: np.ndarray, std: np.ndarray,
                 augment: Callable | None = None):
        super().__init__(x, labels, augment)
        self.rows, self.mean, self.std = np.asarray(rows, dtype=np.int64), mean, std

    def inputs(self, indices: Sequence[int]) -> np.ndarray:
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        order = np.argsort(rows)  # read the file in order, put the rows back where asked
        x = np.empty((len(rows), *self.x.shape[1:]), dtype=np.float32)
        x[order] = self.x[rows[order]]
        return (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]

    def batches(self, batch_size: int = 256):
        for start in range(0, len(self.labels), batch_size):
            yield self.inputs(range(start, min(start + batch_size, len(self.labels)))), \
                self.labels[start:start + batch_size]

    def _device_copy(self, device):
        return None

    def subset(self, indices: Sequence[int]) -> "MappedSplit":
        indices = np.asarray(indices, dtype=np.int64)
        return MappedSplit(self.x, self.rows[indices], self.labels[indices], self.mean, self.std, self.augment)

    def unlabelled(self) -> "MappedSplit":
        return MappedSplit(self.x, self.rows, np.full(len(self.labels), NO_LABEL, dtype=np.int64), self.mean,
                           self.std, self.augment)


@dataclass
class Unreadable:
    """What a loader worker hands back for an image it cannot decode: raised there, the error would reach the
    user wrapped in the worker's traceback; the main process raises it as the one-line BadImage it is."""

    message: str


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | Unreadable | None:
    """Stack the decoded items; a skipped bad image is None and is left out of the batch."""
    unreadable = next((item for item in items if isinstance(item, Unreadable)), None)
    if unreadable is not None:
        return unreadable
    kept = [item for item in items if item is not None]
    if not kept:
        return None
    xs, ys, idx = zip(*kept)
    # default_collate stacks straight into shared memory inside a worker (torch.stack would need one more copy)
    return default_collate(list(xs)), torch.tensor(ys, dtype=torch.long), torch.tensor(idx, dtype=torch.long)


@dataclass
class Decoding:
    """How a stream's images become tensors; shared by its splits."""

    eval_transform: Callable
    train_transform: Callable
    random: bool              # train_transform is random
    skip_bad: bool
    workers: int
    shape: tuple[int, int, int]  # (C, H, W) of every tensor the eval transform makes


class _Items(torch.utils.data.Dataset):
    """(epoch, index) -> (tensor, label, index); epoch None evaluates, otherwise trains seeded by (seed, epoch, index)."""

    def __init__(self, records: Records, decoding: Decoding, seed: int, labels: np.ndarray):
        self.records, self.decoding, self.seed, self.labels = records, decoding, seed, labels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (None, key)
        try:
            image = self.records.open(index)
        except BadImage as error:
            if self.decoding.skip_bad:
                return None
            if torch.utils.data.get_worker_info() is None:
                raise
            return Unreadable(str(error))
        if epoch is None:
            return self.decoding.eval_transform(image), int(self.labels[index]), index
        torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
        return self.decoding.train_transform(image), int(self.labels[index]), index


class _Keys(Sampler):
    """The sampler's indices paired with the epoch, so a worker seeds each image's augmentation by both."""

    def __init__(self, indices: list[int], epoch: int | None):
        self.indices, self.epoch = indices, epoch

    def __iter__(self):
        return iter([(self.epoch, i) for i in self.indices] if self.epoch is not None else self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _decoded(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The loader's batches, less those whose every image was skipped; a worker's unreadable image raised here."""
    for batch in loader:
        if isinstance(batch, Unreadable):
            raise BadImage(batch.message)
        if batch is not None:
            yield batch


# What a forkserver preloads, so each worker starts in milliseconds with these already imported.
WORKER_PRELOAD = ["torch", "PIL.Image", "torchvision.transforms.v2", "compress.data.splits", "compress.data.transforms"]


def worker_context():
    """Loader workers fork from a clean server process, not from this one: by the time a stage decodes
    images this process runs ONNX Runtime, OpenVINO and BLAS thread pools, and forking a process with
    threads can crash the child (or the parent); "spawn" would be safe too, but re-imports torch per worker."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None  # platforms without it (Windows) spawn by default
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    return context


class StreamSplit(Split):
    """Raw images decoded on the fly in DataLoader workers."""

    def __init__(self, records: Records, decoding: Decoding, seed: int, labels: np.ndarray | None = None):
        self.records, self.decoding, self.seed = records, decoding, seed
        self.labels = np.asarray(records.labels if labels is None else labels, dtype=np.int64)
        self.items = _Items(records, decoding, seed, self.labels)
        self._train_loader: tuple[int, _Keys, DataLoader] | None = None

    @property
    def augments(self) -> bool:
        return self.decoding.random

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.decoding.shape)

    def _loader(self, keys: Sampler, batch_size: int, workers: int, pin: bool, persistent: bool = False) -> DataLoader:
        # Its own generator: starting workers would otherwise draw from the global RNG, on the first epoch of
        # a process only (persistent workers), so a resumed run's MixUp/CutMix and dropout would differ.
        return DataLoader(self.items, batch_size=batch_size, sampler=keys, num_workers=workers, collate_fn=_collate,
                          pin_memory=pin, persistent_workers=persistent and workers > 0,
                          prefetch_factor=4 if workers > 0 else None,
                          generator=torch.Generator().manual_seed(self.seed),
                          multiprocessing_context=worker_context() if workers > 0 else None)

    def inputs(self, indices: Sequence[int]) -> np.ndarray:
        items = [self.items[int(i)] for i in indices]
        missing = [int(i) for i, item in zip(indices, items) if item is None]
        if missing:
            raise BadImage(f"{self.records.name(missing[0])}: not a readable image (skipped in training, but this "
                           "sample needs it)")
        return torch.stack([item[0] for item in items]).numpy()

    def sample(self, order: Sequence[int], count: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.decoding.skip_bad:
            return super().sample(order, count)
        kept: list[int] = []
        xs: list[np.ndarray] = []
        for index in order:
            try:
                xs.append(self.inputs([int(index)]))
            except BadImage:
                continue  # truncated pixels behind a good header: skipped here as in training
            kept.append(int(index))
            if len(kept) == count:
                break
        if not kept:
            raise BadImage(f"{self.records.name(int(order[0]))}: no readable image among {len(order)} asked for")
        return np.concatenate(xs), self.labels[np.asarray(kept)]

    def batches(self, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        loader = self._loader(_Keys(list(range(len(self))), None), batch_size, self.decoding.workers, False)
        for batch in _decoded(loader):
            yield batch[0].numpy(), batch[1].numpy()

    def train_loader(self, sampler, batch_size, seed, epoch, device):
        """One DataLoader for every epoch (its workers persist); only its keys change."""
        pin = device.type == "cuda"
        if self._train_loader is None or self._train_loader[0] != batch_size:
            keys = _Keys([], None)
            self._train_loader = (batch_size, keys, self._loader(keys, batch_size, self.decoding.workers, pin,
                                                                 persistent=True))
        _, keys, loader = self._train_loader
        keys.indices, keys.epoch = [int(i) for i in sampler], epoch
        for x, y, idx in _decoded(loader):
            yield x.to(device, non_blocking=pin), y.to(device, non_blocking=pin), idx

    def close(self) -> None:
        """Stop the training loader's persistent workers now, in this thread, rather than whenever the
        garbage collector reaches them (possibly in the middle of another library's threads)."""
        if self._train_loader is not None:
            iterator = getattr(self._train_loader[2], "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            self._train_loader = None

    def subset(self, indices: Sequence[int]) -> "StreamSplit":
        indices = np.asarray(indices, dtype=np.int64)
        return StreamSplit(self.records.subset(indices), self.decoding, self.seed, self.labels[indices])

    def unlabelled(self) -> "StreamSplit":
        return StreamSplit(self.records, self.decoding, self.seed, np.full(len(self), NO_LABEL, dtype=np.int64))


def join(train: Split, transfer: Split | None) -> Split:
    """The training split with the transfer inputs (labels NO_LABEL) after it."""
    if transfer is None or not len(transfer):
        return train
    if isinstance(train, StreamSplit) and isinstance(transfer, StreamSplit):
        return StreamSplit(ConcatRecords([train.records, transfer.records]), train.decoding, train.seed,
                           np.concatenate([train.labels, transfer.labels]))
    if isinstance(train, ArraySplit) and isinstance(transfer, ArraySplit):
        return ArraySplit(np.concatenate([train.inputs(range(len(train))), transfer.inputs(range(len(transfer)))]),
                          np.concatenate([train.labels, transfer.labels]), train.augment)
    raise TypeError("the transfer inputs must be of the training data's kind (arrays, or image files)")


def predict(infer: Callable[[np.ndarray], np.ndarray], split: Split,
            batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of a whole split through `infer` (a session's, or a torch model's), in order.

    The labels are those of the inputs scored: a stream that skips bad images leaves theirs out.
    """
    logits, labels = [], []
    for x, y in split.batches(batch_size):
        logits.append(np.asarray(infer(x)))
        labels.append(y)
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(logits), np.concatenate(labels)
