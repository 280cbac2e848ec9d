"""Text classification: labelled texts, tokenised here, into BERT-style classifiers.

Owns the text readers (text.py), the token-id splits (text_split.py), the tokenizer that is
trained or given and travels with the model (tokenizer.py), and the three int64 inputs with a
dynamic batch and sequence axis. Throughput also counts tokens; parity and the benchmark's grid
cover the shortest, a middle and the longest sequence. The device re-tokenises raw texts with
deploy/runner/preprocess_text.py, which the host's tokenisation calls too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from compress.config import DataConfig, TextConfig
from compress.config.data import TEXT_SOURCES
from compress.data.dataset import Dataset
from compress.models import ModelSpec
from compress.tasks.task import Task
from deploy.runner.preprocess_text import INPUT_NAMES  # the device tokeniser's names, one definition

TOKENIZER_KEY = "tokenizer"  # the export's outputs key of the tokenizer.json written beside the ONNX


class TextClassification(Task):
    name = "text-classification"
    hf_auto_class = "AutoModelForSequenceClassification"
    torch_quantization = ("quantizes image models in torch; a text model is quantized by its engines: add "
                          "onnxruntime:int8 or openvino:int8 (NNCF, transformer mode) to stages.build.targets")
    transformer_graphs = True
    random_views = "the patient recipe crops images at random (consistent views); token ids have no such views"

    @classmethod
    def claims(cls, data: DataConfig) -> bool:
        return data.source in TEXT_SOURCES

    @classmethod
    def check_data(cls, data: DataConfig) -> tuple[str, str] | None:
        if data.source not in TEXT_SOURCES:
            return "task", f"task text-classification reads texts: set data.source: text (got '{data.source}')"
        if data.transfer is not None:
            return "data.transfer", "data.transfer takes images; for texts add the unlabelled texts to train"
        return None

    @property
    def options(self) -> TextConfig:
        return self.data_cfg.text if self.data_cfg.text is not None else TextConfig()

    def load_data(self, seed: int) -> Dataset:
        from compress.tasks.text_classification.text_dataset import load_text_dataset

        return load_text_dataset(self.data_cfg, self.options, seed)

    def declared_class_counts(self) -> dict[str, int] | None:
        from compress.tasks.text_classification.text import read_texts

        if self.data_cfg.path is None:
            return None
        records = read_texts(self.data_cfg.path, self.data_cfg.columns)  # the texts are read, not tokenised
        counts = np.bincount(records.labels, minlength=len(records.classes))
        return {str(name): int(n) for name, n in zip(records.classes, counts)}

    def preprocessing(self, data: Dataset) -> dict[str, Any]:
        return {"text": {k: v for k, v in data.task_spec.items() if k != "vocab_size"}}

    def sample_bytes(self, data: Dataset) -> int:
        return int(np.prod(data.input_shape)) * 8 * len(INPUT_NAMES)  # int64 token ids of every input

    def device_sample(self, run_dir, data: Dataset, order: np.ndarray, count: int,
                      input_names: list[str]) -> tuple[dict[str, np.ndarray], Any, np.ndarray]:
        """Token ids by the tokenizer.json the bundle ships, and the texts, which the device tokenises again."""
        from compress.tasks.text_classification.device_sample import text_sample

        arrays = text_sample(run_dir, data.val.texts_at(order[:count]), self.preprocessing(data)["text"], input_names)
        return arrays, {name: arrays[name] for name in input_names}, data.val.labels[order[:count]]

    def export_files(self, data: Dataset) -> dict[str, tuple[str, str]]:
        """The tokenisation travels with the model it feeds."""
        name = data.task_spec["tokenizer"]
        return {TOKENIZER_KEY: (name, data.task_files[name])}

    def model_spec(self, role_cfg, data: Dataset) -> ModelSpec:
        length = self.options.max_length
        return ModelSpec(role_cfg.model, 0, data.num_classes, length, dict(role_cfg.kwargs),
                         int(data.task_spec["vocab_size"]), length)

    def outline_spec(self, name: str, kwargs: dict[str, Any]) -> ModelSpec:
        return ModelSpec(name, 0, 10, 128, dict(kwargs), 1000, 128)

    def input_specs(self, data: Dataset) -> list[dict[str, Any]]:
        return token_input_specs(int(data.task_spec["vocab_size"]), self.options.max_length)

    def example_inputs(self, data: Dataset, batch: int = 2, length: int | None = None) -> dict[str, torch.Tensor]:
        return token_example(int(data.task_spec["vocab_size"]), self.options.max_length, batch, length)

    def max_sequence_length(self) -> int:
        return self.options.max_length

    def sequence_lengths(self, data: Dataset) -> list[int]:
        """Shortest, median and longest lengths that parity checks and benchmarks cover."""
        longest = self.options.max_length
        return sorted({8, max(8, longest // 2), longest})

    def timing_inputs(self, data: Dataset):
        """Timed at max_length: the fixed-shape worst case, what gates and the recommendation read."""
        return self.input_specs(data)

    def count_macs(self, model, data: Dataset) -> int:
        from compress.models import count_macs

        longest = self.options.max_length
        example = {k: v[:1] for k, v in self.example_inputs(data, 1, longest).items()}
        return count_macs(model, example=example)

    def export(self, model, path, data: Dataset, opset: int, dynamic: bool, shape=None) -> None:
        from compress.exporting.torch_to_onnx import export_onnx_inputs

        export_onnx_inputs(model, self.input_specs(data), self.example_inputs(data, 2), path, opset, dynamic)

    def results_fields(self, length: int | None, grid: list[dict] | None) -> dict[str, Any]:
        return {"task": self.name, "sequence_length": length, "sequence_grid": grid}


def token_example(vocab_size: int, max_length: int, batch: int = 2, length: int | None = None) -> dict[str, torch.Tensor]:
    """Token ids of `length` (default: a quarter of max_length, at least 8) with the last positions padded,
    so the export traces the mask arithmetic, not a constant."""
    length = length or max(8, max_length // 4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[1:, length - 2:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    ids[:, 0] = 2  # [CLS]
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def token_input_specs(vocab_size: int, max_length: int) -> list[dict[str, Any]]:
    """The three int64 inputs with dynamic batch and sequence axes; the first carries the vocabulary and length."""
    specs = [{"name": name, "dtype": "int64", "shape": ["batch", "sequence"]} for name in INPUT_NAMES]
    specs[0]["vocab_size"] = vocab_size
    specs[0]["max_length"] = max_length
    return specs
