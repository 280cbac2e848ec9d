"""The two forms a batch of model inputs takes: one array (pixels) or named arrays (token ids, ...).

Which form a model takes is its task's business; the training loop, calibration and pruning only
pass batches on, and these helpers let them do so without asking. They are the one place outside a
task package that looks at the form, and they sit below the task packages (a library module) so
that the shared libraries may call them.
"""

from __future__ import annotations

from typing import Mapping, Union

import numpy as np
import torch

Inputs = Union[np.ndarray, Mapping[str, np.ndarray]]


def call_model(model: torch.nn.Module, x):
    """model(x) for one tensor, model(**x) for named inputs."""
    return model(**x) if isinstance(x, Mapping) else model(x)


def count(x: Inputs) -> int:
    return len(next(iter(x.values()))) if isinstance(x, Mapping) else len(x)


def rows(x: Inputs, start: int, stop: int | None = None) -> Inputs:
    """Rows start:stop of every input."""
    if isinstance(x, Mapping):
        return {name: value[start:stop] for name, value in x.items()}
    return x[start:stop]


def to_tensors(x: Inputs, device: torch.device | str = "cpu"):
    if isinstance(x, Mapping):
        return {name: torch.as_tensor(value).to(device) for name, value in x.items()}
    return torch.as_tensor(x).to(device)


def as_feed(x: Inputs) -> Inputs:
    """Arrays as engines and NNCF take them: named arrays as they are, pixels as contiguous float32."""
    if isinstance(x, Mapping):
        return x
    return np.ascontiguousarray(x, dtype=np.float32)
