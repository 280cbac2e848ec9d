"""Calibration samples: a seeded subset of the normalised training split, shared by NNCF and the engines."""

from __future__ import annotations

import numpy as np

from compress.data.splits import Split
from compress.tasks.inputs import as_feed


def calibration_samples(train: Split, count: int, seed: int) -> np.ndarray | dict[str, np.ndarray]:
    """`count` training samples (all of them when there are fewer), in a seeded random order, as evaluated."""
    order = np.random.default_rng(seed).permutation(len(train))
    chosen = np.concatenate([np.sort(order[:count]), order[count:]])  # the seeded few first, in file order
    return as_feed(train.sample(chosen, count)[0])  # token ids come padded to the longest of these samples
