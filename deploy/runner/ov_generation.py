"""Greedy decoding of a causal LM's OpenVINO folder on the host and on a device, behind generation.py's interface.

The folder is what compress/stages/lm/openvino_lm.py writes, the form openvino-genai runs: openvino_model.xml (a
stateful IR whose KV cache lives in the infer request), config.json, generation_config.json, tokenizer.json and
the openvino-tokenizers models. `open_generator` gives an OpenVINO folder's OpenVINOGenerator, an onnxruntime-genai
folder's GreedyGenerator. Python 3.8, numpy and openvino: no torch, nothing of the toolchain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np

try:  # a package on the host, flat files in a release on the device
    from .generation import GenerationError, GreedyGenerator, _eos_ids
    from .sessions import openvino_core
except ImportError:
    from generation import GenerationError, GreedyGenerator, _eos_ids
    from sessions import openvino_core


class OpenVINOGenerator(GreedyGenerator):
    """Greedy decoding of a stateful OpenVINO IR folder: the cache is the infer request's state (reset per
    sequence), fed input_ids, an all-ones attention_mask, position_ids and beam_idx (the rows in order), as
    openvino-genai feeds it. Compiled with f32 inference precision, so an fp32 IR computes what torch computes
    on any CPU (OpenVINO would pick bf16 on a CPU with AMX)."""

    def __init__(self, folder, backend: str = "openvino", threads: Optional[int] = None):
        self.folder = Path(folder)
        self.backend = "openvino"
        self.threads = threads
        config = json.loads((self.folder / "config.json").read_text())
        generation_file = self.folder / "generation_config.json"
        generation = json.loads(generation_file.read_text()) if generation_file.is_file() else {}
        self.eos_ids = _eos_ids({"model": {"eos_token_id": generation.get("eos_token_id",
                                                                          config.get("eos_token_id"))}})
        self.context_length = int(config.get("max_position_embeddings") or config.get("n_positions") or 0) or None
        self.vocab_size = config.get("vocab_size")
        self.model_path = self.folder / "openvino_model.xml"
        try:
            core = openvino_core()  # the process's one Core: a Core of its own, freed out of order, broke signals
        except ImportError as e:
            raise GenerationError(f"{self.model_path}: needs the openvino package ({e})") from e
        properties = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled = core.compile_model(str(self.model_path), "CPU", properties)
        self._request = self._compiled.create_infer_request()
        self.providers = ["CPU"]

    def _run(self, ids: np.ndarray, total: int) -> np.ndarray:
        batch, length = ids.shape
        positions = np.broadcast_to(np.arange(total - length, total, dtype=np.int64), ids.shape)
        # share_inputs: OpenVINO reads the arrays in place, rather than copying each into a tensor of its own
        self._request.infer({"input_ids": np.ascontiguousarray(ids, dtype=np.int64),
                             "attention_mask": np.ones((batch, total), np.int64),
                             "position_ids": np.ascontiguousarray(positions),
                             "beam_idx": np.arange(batch, dtype=np.int32)}, share_inputs=True)
        return self._request.get_tensor("logits").data

    def _steps(self, rows: List[List[int]], max_new_tokens: int) -> Iterator[np.ndarray]:
        self._request.reset_state()
        ids, total = np.array(rows, dtype=np.int64), len(rows[0])
        for step in range(max_new_tokens):
            tokens = self._run(ids, total)[:, -1, :].argmax(axis=-1).astype(np.int64)
            yield tokens
            ids, total = tokens.reshape(len(rows), 1), total + 1

    def prefill_logits(self, prompt_ids: Sequence[int]) -> np.ndarray:
        self._request.reset_state()
        ids = np.array([list(prompt_ids)], dtype=np.int64)
        return np.array(self._run(ids, ids.shape[1])[0], dtype=np.float32)


def open_generator(folder, backend: str = "auto", threads: Optional[int] = None) -> GreedyGenerator:
    """The folder's generator: an OpenVINO IR folder's OpenVINOGenerator, else an onnxruntime-genai folder's
    GreedyGenerator with `backend`."""
    if (Path(folder) / "openvino_model.xml").is_file():
        return OpenVINOGenerator(folder, threads=threads)
    return GreedyGenerator(folder, backend=backend, threads=threads)
