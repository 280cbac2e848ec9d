"""What a pipeline trains and scores on: its splits, class names and the preprocessing a device repeats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compress.core.errors import UsageError
from compress.data.splits import Split


@dataclass
class Dataset:
    train: Split
    val: Split
    class_names: list[str]
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    # Inputs without labels for KD (data.transfer), labels NO_LABEL. None when not configured.
    transfer: Split | None = None
    # A held-out test split (data.test_fraction / data.test_path) that neither trains nor chooses an epoch.
    test: Split | None = None
    # Image sources: the evaluation steps on a raw image (compress.data.transforms.eval_spec).
    image_spec: dict[str, Any] | None = None
    # Image files refused by their headers and skipped (data.skip_bad_images).
    skipped: list[str] = field(default_factory=list)
    # What a task's own loader recorded about the inputs, read back only by that task (text: the tokenisation
    # steps and vocabulary size), and the files that travel with the model (text: tokenizer.json by name).
    task_spec: dict[str, Any] | None = None
    task_files: dict[str, str] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.sample_shape

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def scored_split(self) -> tuple[str, Split]:
        """The split a report's accuracy is measured on: test when there is one, else val (which chose the epochs)."""
        return ("test", self.test) if self.test is not None else ("val", self.val)

    def preprocessing(self) -> dict[str, Any]:
        """What a deployed runner must do to raw images: the image steps, then (x - mean) / std per channel."""
        recorded = {"layout": "NCHW", "dtype": "float32", "mean": self.mean, "std": self.std}
        if self.image_spec is not None:
            recorded["image"] = self.image_spec
        return recorded

    # Arrays of array sources, for tools and tests that want them whole.
    x_train = property(lambda self: self.train.x)
    y_train = property(lambda self: self.train.labels)
    x_val = property(lambda self: self.val.x)
    y_val = property(lambda self: self.val.labels)
    x_test = property(lambda self: self.test.x if self.test is not None else None)
    y_test = property(lambda self: self.test.labels if self.test is not None else None)
    x_transfer = property(lambda self: self.transfer.x if self.transfer is not None else None)


def seeded_split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """(x_kept, x_held, y_kept, y_held): `fraction` of the samples held out, stratified when every class can be."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    return tuple(train_test_split(x, y, test_size=fraction, random_state=seed, stratify=stratify))


def check_statistics(mean, std, channels: int) -> None:
    """data.mean/std give one value per channel of the inputs; found only once the data is read."""
    if len(mean) != channels or len(std) != channels:
        std_count = f" (std {len(std)})" if len(std) != len(mean) else ""
        raise UsageError(f"data.mean: {len(mean)} values{std_count} for inputs of {channels} channels")
