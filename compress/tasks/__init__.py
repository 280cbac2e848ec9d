"""What a model's inputs are, told by the task instead of assumed to be NCHW images.

Every stage that feeds a model (training, export, calibration, engines, benchmark, deploy) asks the
task for the input names, dtypes and dynamic axes, for example inputs, and for the preprocessing a
device must repeat. Inputs travel as one float32 array (images) or as a dict of named int64 arrays
(texts); `call_model` and `rows` hide that difference from the code that only passes them on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Union

import numpy as np
import torch

from deploy.runner.preprocess_text import INPUT_NAMES as TEXT_INPUTS  # the device tokeniser's names, one definition

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


@dataclass
class ImageClassification:
    """Today's behaviour: one float32 NCHW input named `input`, top-1 accuracy."""

    sample_shape: tuple[int, ...]
    name: str = "image-classification"
    metric: str = "top1"

    def input_specs(self) -> list[dict[str, Any]]:
        return [{"name": "input", "dtype": "float32", "shape": ["batch", *self.sample_shape]}]

    def example_inputs(self, batch: int = 2, length: int | None = None) -> torch.Tensor:
        return torch.randn(batch, *self.sample_shape)


@dataclass
class TextClassification:
    """A BERT-style classifier: int64 `input_ids`, `attention_mask`, `token_type_ids`, dynamic batch and sequence."""

    vocab_size: int
    max_length: int
    name: str = "text-classification"
    metric: str = "top1"

    def input_specs(self) -> list[dict[str, Any]]:
        specs = [{"name": name, "dtype": "int64", "shape": ["batch", "sequence"]} for name in TEXT_INPUTS]
        specs[0]["vocab_size"] = self.vocab_size
        specs[0]["max_length"] = self.max_length
        return specs

    def example_inputs(self, batch: int = 2, length: int | None = None) -> dict[str, torch.Tensor]:
        """Token ids of `length` (default: a quarter of max_length, at least 8) with the last positions padded,
        so the export traces the mask arithmetic, not a constant."""
        length = length or max(8, self.max_length // 4)
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(5, self.vocab_size, (batch, length), generator=generator)
        mask = torch.ones(batch, length, dtype=torch.int64)
        mask[1:, length - 2:] = 0
        ids = ids.masked_fill(mask == 0, 0)
        ids[:, 0] = 2  # [CLS]
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}

    def sequence_lengths(self) -> list[int]:
        """Shortest, median and longest lengths that parity checks and benchmarks cover."""
        return sorted({8, max(8, self.max_length // 2), self.max_length})


Task = Union[ImageClassification, TextClassification]


def task_of(data) -> Task:
    """The task of a loaded data set (compress.data.Dataset)."""
    text = getattr(data, "text_spec", None)
    if text is not None:
        return TextClassification(int(text["vocab_size"]), int(text["max_length"]))
    return ImageClassification(tuple(data.input_shape))
