"""Calibration samples: a seeded subset of the normalised training split, shared by NNCF and the engines."""

from __future__ import annotations

import numpy as np


def calibration_samples(x_train: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` training samples (all of them when there are fewer), in a seeded random order."""
    order = np.random.default_rng(seed).permutation(len(x_train))[:count]
    return np.ascontiguousarray(x_train[np.sort(order)], dtype=np.float32)
