"""The causal-lm task: GPT-style language models distilled on a text corpus, run with a KV cache.

Its stages are its own (compress.stages.lm): training is next-token prediction over packed blocks, the
measures are perplexity and tokens per second, and the engines are onnxruntime-genai model folders. This
package holds what those stages use: the corpus (documents, splits, tokenizer, blocks), the models, the
token-level KD losses, the training loop and the metrics.
"""

from __future__ import annotations

import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from compress.config import DataConfig
from compress.config.data import CORPUS_SOURCES, CorpusConfig
from compress.core.errors import ConfigError
from compress.tasks.causal_lm import models as lm_models
from compress.tasks.task import Task

# Image and text-classification options a corpus cannot use (field -> the value that means unset).
FOREIGN_OPTIONS = {"text": None, "augment": None, "image_size": None, "eval_resize": None, "transfer": None,
                   "val_path": None, "test_path": None, "channels": None, "mean": None, "std": None, "detection": None}


@dataclass
class CorpusPlan:
    """What the config says of the corpus; nothing is read until a stage asks for the documents."""

    source: str
    path: Path | None
    corpus: CorpusConfig
    val_fraction: float
    test_fraction: float
    seed: int
    config_file: str

    def documents(self) -> Iterator[tuple[str, str]]:
        from compress.tasks.causal_lm.documents import iter_documents

        path = Path(sysconfig.get_paths()["stdlib"]) if self.source == "python-stdlib" else self.path
        found = iter_documents(path, tuple(self.corpus.suffixes), self.corpus.text_column, self.config_file,
                               prompt_column=self.corpus.prompt_column, response_column=self.corpus.response_column)
        if self.corpus.max_documents is None:
            return found
        return (doc for _, doc in zip(range(self.corpus.max_documents), found))

    def split_of(self) -> Callable[[str], str]:
        from compress.tasks.causal_lm.corpus import splitter

        return splitter(self.val_fraction, self.test_fraction, self.seed, self.config_file)

    def describe(self) -> str:
        where = "the Python standard library's sources" if self.source == "python-stdlib" else str(self.path)
        limit = f", at most {self.corpus.max_documents} documents" if self.corpus.max_documents else ""
        if self.corpus.prompt_column is not None:
            limit += (f"; prompt/response pairs ({self.corpus.prompt_column!r}, {self.corpus.response_column!r}): "
                      "losses and perplexity count the responses")
        return (f"corpus: {where}{limit}; split by document ({self.val_fraction:g} val, {self.test_fraction:g} test), "
                f"blocks of {self.corpus.block_size} tokens")


class CausalLM(Task):
    name = "causal-lm"
    metric = "perplexity"
    hf_auto_class = "AutoModelForCausalLM"
    torch_quantization = "causal LMs are weight-quantized when engines are built (build.targets onnxruntime:int4)"
    random_views = "a causal LM reads every block whole"
    checks_models_itself = True

    @classmethod
    def claims(cls, data: DataConfig) -> bool:
        return data.source in CORPUS_SOURCES

    @classmethod
    def check_data(cls, data: DataConfig) -> tuple[str, str] | None:
        if data.source not in CORPUS_SOURCES:
            return "data.source", f"a causal LM reads a corpus: source corpus (files) or python-stdlib, not " \
                                  f"'{data.source}'"
        for option, unset in FOREIGN_OPTIONS.items():
            if getattr(data, option) != unset:
                return f"data.{option}", "not an option of a causal LM corpus (see data.corpus)"
        if data.corpus is not None and data.corpus.prompt_column is not None:
            from compress.tasks.causal_lm.documents import has_rows

            if data.source != "corpus" or (data.path is not None and data.path.exists() and not has_rows(data.path)):
                return "data.corpus.prompt_column", ("prompt/response pairs are rows of a JSONL, a CSV or a Hugging "
                                                     "Face dataset; files, folders and shards hold plain documents")
        return None

    @staticmethod
    def check_model_name(name: str) -> str | None:
        return lm_models.check_lm_name(name)

    def corpus_config(self) -> CorpusConfig:
        return self.data_cfg.corpus or CorpusConfig()

    def load_data(self, seed: int) -> CorpusPlan:
        return CorpusPlan(self.data_cfg.source, self.data_cfg.path, self.corpus_config(), self.data_cfg.val_fraction,
                          self.data_cfg.test_fraction or 0.1, seed, getattr(self, "config_file", "pipeline.yaml"))

    def describe_data(self, data: CorpusPlan) -> list[str]:
        return [data.describe()]

    def complete_config(self, pipeline) -> None:
        self.config_file = pipeline.source_file
        for role in ("teacher", "student"):
            cfg = getattr(pipeline, role)
            problem = lm_models.check_sizes(cfg.model, cfg.kwargs)
            if problem:
                raise ConfigError(pipeline.source_file, f"{role}.kwargs", problem)
        if pipeline.teacher.checkpoint is not None:
            raise ConfigError(pipeline.source_file, "teacher.checkpoint",
                              "a causal LM teacher is an hf:FOLDER model (safetensors), not a checkpoint file")
        if pipeline.teacher.model.startswith("hf-config:") and pipeline.teacher.train is None:
            raise ConfigError(pipeline.source_file, "teacher.train", f"{pipeline.teacher.model} has random weights: "
                              "give teacher.train, or an hf:FOLDER teacher")
        block = self.corpus_config().block_size
        for role in ("teacher", "student"):
            cfg = getattr(pipeline, role)
            positions = cfg.kwargs.get("positions") or _hf_positions(cfg.model)
            if positions is not None and block > positions:
                raise ConfigError(pipeline.source_file, "data.corpus.block_size",
                                  f"{block} tokens is beyond {role} {cfg.model}'s {positions} positions")
        _check_same_tokenizer(pipeline)

    def check_model(self, role: str, role_cfg, data) -> None:
        problem = lm_models.check_lm_name(role_cfg.model) or lm_models.check_sizes(role_cfg.model, role_cfg.kwargs)
        if problem:
            raise ConfigError(getattr(self, "config_file", "pipeline.yaml"), f"{role}.model", problem)

    def results_fields(self, length, grid) -> dict[str, Any]:
        return {"task": self.name}


def _hf_positions(name: str) -> int | None:
    if not name.startswith("hf:"):
        return None
    try:
        config = json.loads((Path(name.split(":", 1)[1]) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("max_position_embeddings") or config.get("n_positions")


def _check_same_tokenizer(pipeline) -> None:
    """Token-level KD compares distributions over one vocabulary: teacher and student must share the tokenizer."""
    folders = {role: Path(getattr(pipeline, role).model.split(":", 1)[1]) for role in ("teacher", "student")
               if getattr(pipeline, role).model.startswith("hf:")}
    files = {role: folder / "tokenizer.json" for role, folder in folders.items()
             if (folder / "tokenizer.json").is_file()}
    if len(files) == 2 and files["teacher"].read_bytes() != files["student"].read_bytes():
        raise ConfigError(pipeline.source_file, "student.model",
                          "the student's tokenizer.json differs from the teacher's: token-level KD compares "
                          "next-token distributions over one vocabulary (cross-tokenizer KD is not supported); "
                          "give the student the teacher's tokenizer")
