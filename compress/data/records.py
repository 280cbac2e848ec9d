"""Labelled raw images that are opened one at a time: the lazy half of the data sources.

A `Records` knows, without decoding anything, how many examples it has, their labels and class
names; `open(i)` decodes one image. Every file-backed image source (an image folder, a CSV/JSONL
manifest, a Hugging Face dataset on disk, webdataset tar shards) is a `Records`, so memory holds
the list of examples, never the pixels.

`check(records, where, channels)` reads each image's header once (no pixel data) to refuse, before
anything trains, a file that is not an image and a folder of mixed channel counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from compress.core.errors import UsageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# PIL modes by channel count; palette and 1-bit images become what their conversion gives.
MODE_CHANNELS = {"1": 1, "L": 1, "I": 1, "F": 1, "I;16": 1, "P": 3, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
                 "RGBA": 4, "CMYK": 4, "LA": 2, "PA": 2}


class BadImage(UsageError):
    """An image that cannot be decoded; `skip_bad_images: true` counts it instead of stopping."""


def decode_errors() -> tuple[type[Exception], ...]:
    """What Pillow raises for a file that is not an image, or is cut short (UnidentifiedImageError is an OSError)."""
    from PIL import Image

    return OSError, ValueError, SyntaxError, Image.DecompressionBombError


def unreadable(name: str, error: Exception) -> BadImage:
    return BadImage(f"{name}: not a readable image ({error}); fix or remove it, or set data.skip_bad_images: true")


class Records:
    """Random access to labelled raw images. Subclasses set `labels`, `class_names` and implement `_open`/`name`."""

    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, index: int) -> str:
        """What an error message calls example `index` (its file, or shard and key)."""
        raise NotImplementedError

    def _open(self, index: int):
        """The PIL image of example `index`, not yet converted."""
        raise NotImplementedError

    def open(self, index: int):
        """The decoded PIL image of example `index`; an unreadable one raises BadImage naming it."""
        try:
            image = self._open(index)
            image.load()
            return image
        except decode_errors() as error:
            raise unreadable(self.name(index), error) from None

    def header(self, index: int) -> tuple[str, tuple[int, int]]:
        """(PIL mode, (width, height)) from the file header alone."""
        image = self._open(index)
        return image.mode, image.size

    def subset(self, indices: Sequence[int]) -> "Subset":
        return Subset(self, np.asarray(indices, dtype=np.int64))


class Subset(Records):
    """Some examples of another Records (a train or val split), keeping its class names."""

    def __init__(self, parent: Records, indices: np.ndarray):
        self.parent, self.indices = parent, indices
        self.labels = parent.labels[indices]
        self.class_names = parent.class_names

    def name(self, index: int) -> str:
        return self.parent.name(int(self.indices[index]))

    def _open(self, index: int):
        return self.parent._open(int(self.indices[index]))

    def open(self, index: int):
        """The parent's open: a torch Dataset's records (no `_open`, already tensors) opens its own way."""
        return self.parent.open(int(self.indices[index]))

    def header(self, index: int):
        return self.parent.header(int(self.indices[index]))


class FileRecords(Records):
    """Images in files: a list of paths with their labels."""

    def __init__(self, files: list[Path], labels: Sequence[int], class_names: list[str]):
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = class_names

    def name(self, index: int) -> str:
        return str(self.files[index])

    def _open(self, index: int):
        from PIL import Image

        return Image.open(self.files[index])


def image_folder(root: Path, field: str = "data.path", classes: list[str] | None = None) -> FileRecords:
    """One sub-folder per class, classes numbered by sorted folder name (torchvision's ImageFolder order).

    `classes` (the train folder's) makes a val folder's labels the same numbers; a class folder the
    train split lacks, and an empty class folder, are refused naming the folder.
    """
    if not root.is_dir():
        raise UsageError(f"{root}: {field}: not a folder")
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not found:
        raise UsageError(f"{root}: {field}: imagefolder needs one sub-folder per class")
    if classes is not None:
        extra = [c for c in found if c not in classes]
        if extra:
            raise UsageError(f"{root / extra[0]}: {field}: class folder '{extra[0]}' is not among the train classes "
                             f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})")
    names = classes if classes is not None else found
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            continue  # a val folder may lack a class; the train folder has them all by construction
        images = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not images:
            raise UsageError(f"{folder}: {field}: class '{name}' has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += images
        labels += [label] * len(images)
    return FileRecords(files, labels, names)


def check(records: Records, where: str, channels: int | None, skip_bad: bool) -> dict[str, Any]:
    """Read every header once: {"bad": [indices not an image], "channels": C, "size": (w, h) or None if sizes differ}.

    `channels` None means the images must agree on a channel count (mixed gray and colour is
    refused, naming one of each); 1 or 3 converts every image to it.
    """
    bad: list[int] = []
    first_of: dict[int, int] = {}
    sizes: set[tuple[int, int]] = set()
    for index in range(len(records)):
        try:
            mode, size = records.header(index)
        except decode_errors() as error:
            if not skip_bad:
                raise unreadable(records.name(index), error) from None
            bad.append(index)
            continue
        first_of.setdefault(1 if MODE_CHANNELS.get(mode, 3) <= 2 else 3, index)  # alpha is dropped
        if len(sizes) < 2:
            sizes.add(size)
    if not first_of:
        raise UsageError(f"{where}: no readable images")
    if channels is None and len(first_of) > 1:
        examples = ", ".join(f"{records.name(i)} has {c}" for c, i in sorted(first_of.items()))
        raise UsageError(f"{where}: images of mixed channel counts ({examples}); set data.channels: 3 (or 1) to "
                         "convert them all")
    return {"bad": bad, "channels": channels or next(iter(first_of)), "size": next(iter(sizes)) if len(sizes) == 1 else None}


class ConcatRecords(Records):
    """Several Records one after the other (train then transfer inputs), indices running on."""

    def __init__(self, parts: list[Records]):
        self.parts = parts
        self.labels = np.concatenate([p.labels for p in parts])
        self.class_names = parts[0].class_names
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def _part(self, index: int) -> tuple[Records, int]:
        part = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.parts[part], index - int(self.offsets[part])

    def name(self, index: int) -> str:
        part, local = self._part(index)
        return part.name(local)

    def _open(self, index: int):
        part, local = self._part(index)
        return part._open(local)

    def open(self, index: int):
        part, local = self._part(index)
        return part.open(local)


class TorchDatasetRecords(Records):
    """A user's torch Dataset (from `module:function`) of (tensor, label) items: already tensors, no header."""

    def __init__(self, dataset, where: str):
        self.dataset, self.where = dataset, where
        targets = getattr(dataset, "targets", None)
        if targets is None:  # one pass over the items for their labels
            targets = [int(dataset[i][1]) for i in range(len(dataset))]
        self.labels = np.asarray(targets, dtype=np.int64)
        classes = getattr(dataset, "classes", None)
        self.class_names = [str(c) for c in classes] if classes is not None else \
            [str(i) for i in range(int(self.labels.max()) + 1 if len(self.labels) else 0)]

    def name(self, index: int) -> str:
        return f"{self.where}[{index}]"

    def open(self, index: int):
        item = self.dataset[index]
        return item[0] if isinstance(item, (tuple, list)) else item
