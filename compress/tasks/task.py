"""The Task interface: what a stage asks instead of testing which kind of model it serves.

A task owns everything that differs between image classification, text classification and the
tasks to come: which `data:` options apply to it, how records become splits, the model specs and
where an hf: folder's weights come from, the inputs (names, dtypes, dynamic axes, examples), how a
model is exported, what a benchmark times and counts, what a device repeats on raw inputs, and what
`compress validate` and the run log say about the data. The shared machinery (record sources,
training loop, engines, harness, gates, report skeleton) never asks which task it serves.

A task is bound to one pipeline's data section (`Task(data_cfg)`); members that need the loaded data
take it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from compress.config import DataConfig
from compress.data.dataset import Dataset
from compress.models import ModelSpec

# Fewer held-out samples than this in a class make its share of top-1 noise: the run and validate say so.
MIN_SAMPLES_PER_CLASS = 5


@dataclass
class Geometry:
    """What the data will look like; None where it cannot be told without reading the data."""

    in_channels: int | None = None
    input_size: int | None = None
    num_classes: int | None = None

    @property
    def known(self) -> bool:
        return None not in (self.in_channels, self.input_size, self.num_classes)


class Task:
    name: ClassVar[str]
    metric: ClassVar[str] = "top1"
    # The transformers Auto class an hf: folder's own weights are read through.
    hf_auto_class: ClassVar[str]
    # None when the quantize stage (NNCF in torch) applies; else why not, and what to do instead.
    torch_quantization: ClassVar[str | None] = None
    # Whether build.transformer_optimize (ONNX Runtime's Transformer fusions) applies to its models.
    transformer_graphs: ClassVar[bool] = False
    # None when KD's patient recipe (random crops seen by teacher and student alike) applies; else why not.
    random_views: ClassVar[str | None] = None

    def __init__(self, data_cfg: DataConfig):
        self.data_cfg = data_cfg

    # --- choosing the task and checking its part of the config (no data read) ---

    @classmethod
    def claims(cls, data: DataConfig) -> bool:
        """Whether a pipeline without `task:` whose data section is `data` is this task's."""
        raise NotImplementedError

    @classmethod
    def check_data(cls, data: DataConfig) -> tuple[str, str] | None:
        """(field under data, message) for a data option this task cannot use, or a source it cannot read."""
        return None

    def complete_config(self, pipeline) -> None:
        """Fill in what the config leaves to the task once the models are known (image mean/std of the model)."""

    # --- data ---

    def load_data(self, seed: int) -> Dataset:
        raise NotImplementedError

    def declared_geometry(self) -> Geometry | None:
        """The data's geometry from the config and file headers alone; None when only reading the data tells."""
        return None

    def declared_class_counts(self) -> dict[str, int] | None:
        """Samples per class as the files declare them, without decoding a sample (compress validate)."""
        return None

    def describe_data(self, data: Dataset) -> list[str]:
        """What the run log and `compress validate` say about the loaded data: sizes, then thin classes."""
        splits = [f"{len(data.train)} train", f"{len(data.val)} val"]
        splits += [f"{len(data.test)} test"] if data.test is not None else []
        lines = [f"{', '.join(splits)} samples, {data.num_classes} classes"]
        return lines + self.thin_classes(data)

    @staticmethod
    def thin_classes(data: Dataset) -> list[str]:
        """A class with a handful of held-out samples scores 0 or 1 by chance: one warning per split."""
        found = []
        for split, labels in [("validation", data.y_val), ("test", data.y_test)]:
            if labels is None:
                continue
            counts = np.bincount(labels, minlength=data.num_classes)
            thin = [f"'{data.class_names[i]}' {int(n)}" for i, n in enumerate(counts) if n < MIN_SAMPLES_PER_CLASS]
            if thin:
                listed = ", ".join(thin[:5]) + (", ..." if len(thin) > 5 else "")
                found.append(f"warning: {len(thin)} class(es) with fewer than {MIN_SAMPLES_PER_CLASS} {split} "
                             f"samples ({listed}): their accuracy is noise; add samples or raise data.val_fraction")
        return found

    def val_inputs(self, data: Dataset, count: int):
        """The first `count` val samples as an engine takes them (what `compress diagnose` compares on)."""
        return data.val.sample(range(len(data.val)), count)[0]

    def preprocessing(self, data: Dataset) -> dict[str, Any]:
        """What a deployed runner must do to raw inputs (recorded in the run, shipped in every bundle)."""
        raise NotImplementedError

    def export_files(self, data: Dataset) -> dict[str, tuple[str, str]]:
        """Files that travel with the exported model: {outputs key: (file name, text)}."""
        return {}

    def sample_bytes(self, data: Dataset) -> int:
        """Bytes of one preprocessed sample in a bundle's val sample (float32 pixels by default)."""
        return int(np.prod(data.input_shape)) * 4

    def device_sample(self, run_dir, data: Dataset, order: np.ndarray, count: int,
                      input_names: list[str]) -> tuple[dict[str, np.ndarray], Any, np.ndarray]:
        """(arrays the bundle ships, the model's feed, labels) for the val samples `order[:count]`: what a device
        scores itself on, and repeats from raw inputs where the task ships the raw inputs too."""
        x, y = data.val.sample(order, count)
        x = x.astype(np.float32)
        return {"x": x}, x, y

    # --- models ---

    # A task whose models are not built through compress.models (causal LMs) checks them in check_model.
    checks_models_itself: ClassVar[bool] = False

    def check_model(self, role: str, role_cfg, data) -> None:
        """Refuse (ConfigError naming role.model or role.kwargs) a model that cannot serve this data."""

    def validate_models(self, pipeline, data) -> list[str]:
        """What `compress validate` says of the models and the KD between them, built on the meta device (no
        weights, no data through them); refuses (ConfigError) what cannot be distilled. Default: nothing."""
        return []

    def model_spec(self, role_cfg, data: Dataset) -> ModelSpec:
        """The spec of the teacher's or student's model (`role_cfg`) for this data."""
        raise NotImplementedError

    def outline_spec(self, name: str, kwargs: dict[str, Any]) -> ModelSpec:
        """A placeholder spec to build a model on the meta device before any data is read (module paths only)."""
        raise NotImplementedError

    # --- inputs, export and timing ---

    def input_specs(self, data: Dataset) -> list[dict[str, Any]]:
        """Each model input: name, dtype and shape with its dynamic axes named."""
        raise NotImplementedError

    def example_inputs(self, data: Dataset, batch: int = 2, length: int | None = None):
        """Inputs to trace a model with (a tensor, or named tensors)."""
        raise NotImplementedError

    def max_sequence_length(self) -> int | None:
        """The longest sequence of inputs with a sequence axis (from the config); None for fixed-shape inputs."""
        return None

    def sequence_lengths(self, data: Dataset) -> list[int]:
        """Lengths that parity checks and the benchmark's (batch, length) grid cover; [] for fixed shapes."""
        return []

    def timing_inputs(self, data: Dataset):
        """What the latency harness makes inputs from: a per-sample shape, or the input specs."""
        return data.input_shape

    def count_macs(self, model, data: Dataset) -> int:
        from compress.models import count_macs

        return count_macs(model, data.input_shape)

    def export(self, model, path, data: Dataset, opset: int, dynamic: bool, shape=None) -> None:
        raise NotImplementedError

    def evaluate(self, logits: np.ndarray, labels: np.ndarray,
                 reference: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray]:
        """A model's or engine's metrics on a split (`reference`: the teacher's predictions, for agreement) and
        the per-sample predictions the report's paired tests compare."""
        from deploy.runner.harness import accuracy_report

        return accuracy_report(logits, labels, reference), logits.argmax(1)

    def results_fields(self, length: int | None, grid: list[dict] | None) -> dict[str, Any]:
        """What this task adds to results.json beside the rows (nothing for image classification)."""
        return {}
