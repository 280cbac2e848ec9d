"""The preprocessing a bundle records, applied on the device to raw inputs (numpy only).

The host records its evaluation preprocessing as data in manifest.json (`preprocessing`), so the
device repeats exactly the steps the host measured with: today (x - mean) / std per channel of an
NCHW float32 batch.
"""

from __future__ import annotations


def preprocess(x, manifest: dict):
    """Raw inputs (N, C, H, W), or one (C, H, W), to the normalised float32 batch the model takes."""
    import numpy as np

    pre = manifest["preprocessing"]
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == len(manifest["input"]["shape"]) - 1:
        x = x[None]
    mean = np.asarray(pre["mean"], dtype=np.float32)[None, :, None, None]
    std = np.asarray(pre["std"], dtype=np.float32)[None, :, None, None]
    return (x - mean) / std
