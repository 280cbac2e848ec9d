"""Greedy decoding of a causal LM's OpenVINO folder on the host and on a device, behind generation.py's interface.

The folder is what compress/stages/lm/openvino_lm.py writes, the form openvino-genai runs: openvino_model.xml (a
stateful IR whose KV cache lives in the infer request), config.json, generation_config.json, tokenizer.json and
the openvino-tokenizers models. `open_generator` gives an OpenVINO folder's OpenVINOGenerator, an onnxruntime-genai
folder's GreedyGenerator. On a device with openvino-genai, the release is run by its LLMPipeline instead
(OpenVINOGenAIGenerator), on the same execution as the host's loop: the stateful model with SDPA attention, f32.
Python 3.8, numpy and openvino: no torch, nothing of the toolchain.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

try:  # a package on the host, flat files in a release on the device
    from .generation import GenerationError, GreedyGenerator, WholeGenerationGenerator, read_hf_settings
    from .sessions import openvino_core
except ImportError:
    from generation import GenerationError, GreedyGenerator, WholeGenerationGenerator, read_hf_settings
    from sessions import openvino_core


class OpenVINOGenerator(GreedyGenerator):
    """Greedy decoding of a stateful OpenVINO IR folder: the cache is the infer request's state (reset per
    sequence), fed input_ids, an all-ones attention_mask, position_ids and beam_idx (the rows in order), as
    openvino-genai feeds it. Compiled with f32 inference precision, so an fp32 IR computes what torch computes
    on any CPU (OpenVINO would pick bf16 on a CPU with AMX)."""

    def __init__(self, folder, backend: str = "openvino", threads: Optional[int] = None):
        read_hf_settings(self, folder, threads)
        self.model_path = self.folder / "openvino_model.xml"
        self.backend = "openvino"
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


class OpenVINOGenAIGenerator(WholeGenerationGenerator):
    """Greedy decoding of the folder by openvino-genai's LLMPipeline, what a user of the folder runs on a device.

    Asked for SDPA attention and f32: the stateful model as OpenVINOGenerator runs it, so an fp32 folder gives the
    host's tokens (LLMPipeline's default, paged attention, is another execution). The tokens come from a streamer
    called once per token, which also records when each arrived (token_times) and stops the pipeline after the
    first stop id, so the eos is returned with the new tokens as by the other generators (openvino-genai's own
    stop would leave it out). One prompt per call; no logits (prefill_logits is OpenVINOGenerator's).
    Runs in the device's runner process only: the host keeps openvino-genai in child processes.
    """

    runtime = "openvino-genai's LLMPipeline"

    def __init__(self, folder, backend: str = "openvino-genai", threads: Optional[int] = None):
        read_hf_settings(self, folder, threads)
        self.model_path = self.folder / "openvino_model.xml"
        self.backend = "openvino-genai"
        try:
            import openvino as ov
            import openvino_genai
        except ImportError as e:
            raise GenerationError(f"{self.model_path}: backend openvino-genai needs the openvino_genai package "
                                  f"({e})") from e
        self._ov, self._genai = ov, openvino_genai
        properties = {"INFERENCE_PRECISION_HINT": "f32", "ATTENTION_BACKEND": "SDPA"}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            try:
                self._pipeline = openvino_genai.LLMPipeline(str(self.folder), "CPU", **properties)
            except RuntimeError:  # a release before ATTENTION_BACKEND, whose only LLMPipeline is the stateful one
                properties.pop("ATTENTION_BACKEND")
                self._pipeline = openvino_genai.LLMPipeline(str(self.folder), "CPU", **properties)
        except RuntimeError as error:
            reason = str(error).strip().splitlines()
            raise GenerationError(f"{self.model_path}: openvino-genai {openvino_genai.__version__} here cannot "
                                  f"load it: {reason[0] if reason else type(error).__name__}") from None
        self.providers = ["openvino-genai CPU"]

    def token_times(self, prompt_ids: Sequence[int], max_new_tokens: int,
                    eos_id: Optional[int] = None) -> Tuple[List[int], float, List[float]]:
        rows = [[int(t) for t in prompt_ids]]
        self._check(rows, max_new_tokens)
        if max_new_tokens <= 0:
            return [], time.perf_counter(), []
        config = self._genai.GenerationConfig()
        config.max_new_tokens, config.do_sample = int(max_new_tokens), False
        config.ignore_eos = True  # the streamer stops after the stop id, so that the id is kept
        streamer = _token_recorder(self._genai, self._stop_ids(eos_id))
        ids = self._ov.Tensor(np.array(rows, dtype=np.int64))
        start = time.perf_counter()
        self._pipeline.generate(ids, config, streamer)
        return streamer.tokens, start, streamer.times

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, eos_id: Optional[int] = None) -> List[int]:
        return self.token_times(prompt_ids, max_new_tokens, eos_id)[0]


def _token_recorder(openvino_genai, stops: frozenset):
    """A streamer (openvino_genai.StreamerBase) keeping each new token id and its arrival time, stopping the
    generation after a stop id. `write` is the current API (an id or a list of ids; StreamingStatus), `put` the
    2024 one (one id; True stops)."""

    class TokenRecorder(openvino_genai.StreamerBase):
        def __init__(self):
            super().__init__()
            self.tokens, self.times = [], []
            self.stopped = False

        def _take(self, token) -> bool:
            for one in token if isinstance(token, (list, tuple)) else [token]:
                if self.stopped:
                    break
                self.tokens.append(int(one))
                self.times.append(time.perf_counter())
                self.stopped = int(one) in stops
            return self.stopped

        def write(self, token):
            stop = self._take(token)
            status = getattr(openvino_genai, "StreamingStatus", None)
            return stop if status is None else (status.STOP if stop else status.RUNNING)

        def put(self, token) -> bool:
            return self._take(token)

        def end(self) -> None:
            pass

    return TokenRecorder()


def openvino_genai_installed() -> bool:
    try:
        importlib.import_module("openvino_genai")
    except ImportError:
        return False
    return True


def open_generator(folder, backend: str = "auto", threads: Optional[int] = None) -> GreedyGenerator:
    """The folder's generator: an OpenVINO IR folder's OpenVINOGenerator, else an onnxruntime-genai folder's
    GreedyGenerator with `backend`."""
    if (Path(folder) / "openvino_model.xml").is_file():
        return OpenVINOGenerator(folder, threads=threads)
    return GreedyGenerator(folder, backend=backend, threads=threads)
