"""Greedy text generation from an onnxruntime-genai model folder, on the host and on a device.

The folder is what onnxruntime-genai's model builder writes: model.onnx (+ model.onnx.data),
genai_config.json, tokenizer.json, tokenizer_config.json. `GreedyGenerator` decodes it greedily with
one of two backends behind one interface:

- "genai": onnxruntime-genai's own generator (og.Model, og.GeneratorParams, og.Generator);
- "onnxruntime": a plain ONNX Runtime loop over the KV cache, for devices without onnxruntime-genai.
  genai_config.json names the inputs and outputs (input_ids, attention_mask, optional position_ids,
  past_key_values.%d.key/value in, present.%d.key/value out) and gives the cache's shape; the prompt
  is run once with an empty past (batch, kv_heads, 0, head_size), then one token at a time with the
  presents as the next past and an all-ones attention_mask one longer each step (the builder's
  GroupQueryAttention derives positions from the mask, so it is int64 and never padded here).
- "auto": genai where it imports, onnxruntime otherwise.

An OpenVINO folder is decoded by ov_generation.OpenVINOGenerator with the same interface; ov_generation's
`open_generator` picks the class by what the folder holds.

Both stop a sequence at the model's own eos (genai_config.json's eos_token_id, an id or a list, as
onnxruntime-genai always does) and at `eos_id` when given; the eos token is returned with the new
tokens, as transformers' generate does (decode_timing.py times them: time to first token, decode
tokens/s, batch throughput); `load_tokenizer` encodes and decodes text without transformers. Python 3.8, numpy, onnxruntime, and optionally onnxruntime_genai and
tokenizers, imported when used: no torch, nothing of the toolchain.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

try:  # on the host: the deploy.runner package
    from . import sessions
except ImportError:  # on the device: loaded from the release folder
    import sessions

BACKENDS = ("auto", "genai", "onnxruntime")
# genai_config.json's provider names as ONNX Runtime execution providers (CPU is always added last).
GENAI_PROVIDERS = {"cuda": "CUDAExecutionProvider", "dml": "DmlExecutionProvider",
                   "webgpu": "WebGpuExecutionProvider", "qnn": "QNNExecutionProvider",
                   "openvino": "OpenVINOExecutionProvider", "NvTensorRtRtx": "NvTensorRTRTXExecutionProvider"}


class GenerationError(RuntimeError):
    """A model folder that cannot be generated from here (no backend, a config it does not describe)."""


def genai_available() -> bool:
    try:
        importlib.import_module("onnxruntime_genai")
    except ImportError:
        return False
    return True


def read_genai_config(folder) -> dict:
    path = Path(folder) / "genai_config.json"
    if not path.is_file():
        raise GenerationError(f"{folder}: no genai_config.json (not an onnxruntime-genai model folder)")
    return json.loads(path.read_text())


def _eos_ids(config: dict) -> tuple:
    eos = config.get("model", {}).get("eos_token_id")
    if eos is None:
        return ()
    if isinstance(eos, (list, tuple)):
        return tuple(int(e) for e in eos)
    return (int(eos),)


class GreedyGenerator:
    """Greedy decoding of an onnxruntime-genai model folder; `backend` is "genai", "onnxruntime" or "auto".

    `generate` decodes one prompt, `generate_batch` several prompts of one length together (no padding),
    `stream`/`stream_batch` yield the tokens step by step (what the timing functions time), and
    `prefill_logits` gives the logits of every prompt position from the plain ONNX Runtime session.
    """

    def __init__(self, folder, backend: str = "auto", threads: Optional[int] = None):
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: one of {', '.join(BACKENDS)}")
        self.folder = Path(folder)
        self.config = read_genai_config(self.folder)
        self.threads = threads
        model = self.config.get("model", {})
        decoder = model.get("decoder", {})
        self.eos_ids = _eos_ids(self.config)
        self.context_length = int(model.get("context_length") or 0) or None
        self.vocab_size = model.get("vocab_size")
        self.num_layers = int(decoder["num_hidden_layers"])
        self.kv_heads = int(decoder.get("num_key_value_heads") or decoder["num_attention_heads"])
        self.head_size = int(decoder["head_size"])
        self.model_path = self.folder / decoder.get("filename", "model.onnx")
        if backend == "auto":
            backend = "genai" if genai_available() else "onnxruntime"
        self.backend = backend
        self._og = None
        self._og_model = None
        self._session = None
        if backend == "genai":
            self._open_genai()
        else:
            self._open_session()

    # -- opening -------------------------------------------------------------------------------------

    def _open_genai(self) -> None:
        try:
            import onnxruntime_genai as og
        except ImportError as e:
            raise GenerationError(f"backend 'genai' needs onnxruntime_genai ({e})") from e
        config = og.Config(str(self.folder))
        if self.threads:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": int(self.threads)}}}}))
        self._og = og
        self._og_model = og.Model(config)

    def _open_session(self):
        """The plain ONNX Runtime session (the onnxruntime backend's, and prefill_logits' for both)."""
        if self._session is not None:
            return self._session
        import onnxruntime as ort

        decoder = self.config["model"]["decoder"]
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        wanted = []
        for entry in decoder.get("session_options", {}).get("provider_options", []) or []:
            for name in entry:
                provider = GENAI_PROVIDERS.get(name)
                if provider in available and provider not in wanted:
                    wanted.append(provider)
        wanted.append("CPUExecutionProvider")
        self.providers = wanted
        try:
            session = ort.InferenceSession(str(self.model_path), options, providers=wanted)
        except Exception as error:  # onnxruntime raises its own exception types, one per failure kind
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            hint = (" (its quantized embedding table: build with stages.build.quantize_embeddings: false)"
                    if "GatherBlockQuantized" in reason else "")
            raise GenerationError(f"{self.model_path}: onnxruntime {ort.__version__} here cannot load it{hint}: "
                                  f"{reason}") from None
        inputs = {i.name: i for i in session.get_inputs()}
        self.input_dtypes = {name: sessions.ORT_DTYPES.get(i.type, "float32") for name, i in inputs.items()}
        names = decoder.get("inputs", {})
        outs = decoder.get("outputs", {})
        self.ids_name = names.get("input_ids", "input_ids")
        self.mask_name = names.get("attention_mask", "attention_mask")
        self.position_name = names.get("position_ids", "position_ids")
        for required in (self.ids_name,):
            if required not in inputs:
                raise GenerationError(f"{self.model_path}: no input {required!r} (inputs: {', '.join(inputs)})")
        self.has_mask = self.mask_name in inputs
        self.has_positions = self.position_name in inputs
        key, value = names.get("past_key_names", "past_key_values.%d.key"), \
            names.get("past_value_names", "past_key_values.%d.value")
        pkey, pvalue = outs.get("present_key_names", "present.%d.key"), \
            outs.get("present_value_names", "present.%d.value")
        self.past_names = [pattern % i for i in range(self.num_layers) for pattern in (key, value)]
        self.present_names = [pattern % i for i in range(self.num_layers) for pattern in (pkey, pvalue)]
        missing = [n for n in self.past_names if n not in inputs]
        if missing:
            raise GenerationError(f"{self.model_path}: genai_config.json names past inputs the model lacks: "
                                  f"{', '.join(missing)}")
        self.logits_name = outs.get("logits", "logits")
        self.output_names = [self.logits_name] + self.present_names
        self._session = session
        return session

    # -- decoding ------------------------------------------------------------------------------------

    def _stop_ids(self, eos_id) -> frozenset:
        return frozenset(self.eos_ids + (() if eos_id is None else (int(eos_id),)))

    def _check(self, rows: List[List[int]], max_new_tokens: int) -> None:
        if not rows or not all(rows):
            raise ValueError("each prompt needs at least one token")
        length = len(rows[0])
        if any(len(r) != length for r in rows):
            raise ValueError("generate_batch takes prompts of one length (no padding): "
                             f"got lengths {sorted(set(len(r) for r in rows))}")
        if self.context_length and length + max_new_tokens > self.context_length:
            raise ValueError(f"prompt ({length}) + max_new_tokens ({max_new_tokens}) is over the model's "
                             f"context_length ({self.context_length})")

    def stream_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     eos_id: Optional[int] = None) -> Iterator[np.ndarray]:
        """One int64 array (batch,) per step, the next token of every row, until every row has hit an eos
        (a row that has goes on computing: its later tokens mean nothing) or max_new_tokens steps."""
        rows = [[int(t) for t in p] for p in prompts]
        self._check(rows, max_new_tokens)
        if max_new_tokens <= 0:
            return
        stop = self._stop_ids(eos_id)
        done = np.zeros(len(rows), dtype=bool)
        for tokens in self._steps(rows, max_new_tokens):
            yield tokens
            if stop:  # a set lookup per row: np.isin costs more than a small model's step here
                done |= np.array([token in stop for token in tokens.tolist()], dtype=bool)
            if done.all():
                return

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int, eos_id: Optional[int] = None) -> Iterator[int]:
        """The new tokens of one prompt as they come, the eos included."""
        for tokens in self.stream_batch([prompt_ids], max_new_tokens, eos_id):
            yield int(tokens[0])

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, eos_id: Optional[int] = None) -> List[int]:
        """The new tokens only (the prompt is not repeated), up to and including the first eos."""
        return list(self.stream(prompt_ids, max_new_tokens, eos_id))

    def token_times(self, prompt_ids: Sequence[int], max_new_tokens: int,
                    eos_id: Optional[int] = None) -> Tuple[List[int], float, List[float]]:
        """(the new tokens, when the call began, when each token reached the caller): what time_generation
        times. A runtime that calls back per token (openvino-genai) records the times in its callback."""
        tokens, times = [], []
        start = time.perf_counter()
        for token in self.stream(prompt_ids, max_new_tokens, eos_id):
            times.append(time.perf_counter())
            tokens.append(token)
        return tokens, start, times

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                       eos_id: Optional[int] = None) -> List[List[int]]:
        """Each prompt's new tokens, decoded together in one batch; the prompts must be of one length."""
        stop = self._stop_ids(eos_id)
        out = [[] for _ in prompts]  # type: List[List[int]]
        ended = [False] * len(prompts)
        for tokens in self.stream_batch(prompts, max_new_tokens, eos_id):
            for row, token in enumerate(tokens.tolist()):
                if not ended[row]:
                    out[row].append(int(token))
                    ended[row] = token in stop
        return out

    def _steps(self, rows: List[List[int]], max_new_tokens: int) -> Iterator[np.ndarray]:
        """The next token of every row, step by step (no stopping: stream_batch stops)."""
        if self.backend == "genai":
            return self._genai_steps(rows, max_new_tokens)
        return self._ort_steps(rows, max_new_tokens)

    def _genai_steps(self, rows: List[List[int]], max_new_tokens: int) -> Iterator[np.ndarray]:
        og = self._og
        params = og.GeneratorParams(self._og_model)
        params.set_search_options(max_length=len(rows[0]) + max_new_tokens, do_sample=False,
                                  batch_size=len(rows))
        generator = og.Generator(self._og_model, params)
        generator.append_tokens(np.array(rows, dtype=np.int32))  # runs the prompt
        count = 0
        while count < max_new_tokens and not generator.is_done():
            generator.generate_next_token()
            yield np.asarray(generator.get_next_tokens(), dtype=np.int64).reshape(len(rows))
            count += 1

    def _ort_steps(self, rows: List[List[int]], max_new_tokens: int) -> Iterator[np.ndarray]:
        session = self._open_session()
        batch, length = len(rows), len(rows[0])
        ids = np.array(rows, dtype=self.input_dtypes[self.ids_name])
        feeds = {name: np.zeros((batch, self.kv_heads, 0, self.head_size), dtype=self.input_dtypes[name])
                 for name in self.past_names}
        total = length
        for step in range(max_new_tokens):
            feeds[self.ids_name] = ids
            if self.has_mask:
                feeds[self.mask_name] = np.ones((batch, total), dtype=self.input_dtypes[self.mask_name])
            if self.has_positions:
                positions = np.arange(total - ids.shape[1], total, dtype=self.input_dtypes[self.position_name])
                feeds[self.position_name] = np.ascontiguousarray(np.broadcast_to(positions, ids.shape))
            outputs = session.run(self.output_names, feeds)
            tokens = np.asarray(outputs[0][:, -1, :]).argmax(axis=-1).astype(np.int64)
            yield tokens
            if step + 1 == max_new_tokens:
                return
            feeds.update(zip(self.past_names, outputs[1:]))
            ids = tokens.reshape(batch, 1).astype(self.input_dtypes[self.ids_name])
            total += 1

    def prefill_logits(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """float32 (seq, vocab): the logits at every prompt position, one pass of the plain ORT session."""
        session = self._open_session()
        ids = np.array([list(prompt_ids)], dtype=self.input_dtypes[self.ids_name])
        length = ids.shape[1]
        feeds = {name: np.zeros((1, self.kv_heads, 0, self.head_size), dtype=self.input_dtypes[name])
                 for name in self.past_names}
        feeds[self.ids_name] = ids
        if self.has_mask:
            feeds[self.mask_name] = np.ones((1, length), dtype=self.input_dtypes[self.mask_name])
        if self.has_positions:
            feeds[self.position_name] = np.arange(length, dtype=self.input_dtypes[self.position_name])[None]
        logits = session.run([self.logits_name], feeds)[0]
        if logits.shape[1] != length:
            raise GenerationError(f"{self.model_path}: logits for {logits.shape[1]} of {length} prompt positions "
                                  "(a model built to output the last position only)")
        return np.asarray(logits[0], dtype=np.float32)


def greedy_agreement(produced: Sequence[Sequence[int]], expected: Sequence[Sequence[int]]) -> Dict[str, object]:
    """How far greedy runs agree with reference runs, position by position: a sequence shorter or longer than its
    reference counts the positions it lacks as disagreeing. {"agreement", "identical_prompts", "prompts",
    "positions"}."""
    same = total = identical = 0
    for ours, theirs in zip(produced, expected):
        ours, theirs = [int(t) for t in ours], [int(t) for t in theirs]
        same += sum(a == b for a, b in zip(ours, theirs))
        total += max(len(ours), len(theirs))
        identical += ours == theirs
    return {"agreement": same / max(1, total), "identical_prompts": identical, "prompts": len(expected),
            "positions": total}


def read_hf_settings(generator: GreedyGenerator, folder, threads: Optional[int]) -> None:
    """What a generator reads of a Hugging Face style folder (config.json, generation_config.json): its eos ids,
    context length and vocabulary size."""
    generator.folder = Path(folder)
    generator.threads = threads
    config = json.loads((generator.folder / "config.json").read_text())
    generation_file = generator.folder / "generation_config.json"
    generation = json.loads(generation_file.read_text()) if generation_file.is_file() else {}
    generator.eos_ids = _eos_ids({"model": {"eos_token_id": generation.get("eos_token_id",
                                                                           config.get("eos_token_id"))}})
    generator.context_length = int(config.get("max_position_embeddings") or config.get("n_positions") or 0) or None
    generator.vocab_size = config.get("vocab_size")


class WholeGenerationGenerator(GreedyGenerator):
    """A runtime's own generator that decodes one prompt per call and hands its tokens back when it is done
    (openvino-genai's LLMPipeline, TensorRT-LLM's LLM API): subclasses give `generate` and `token_times`."""

    runtime = "this runtime"

    def stream_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     eos_id: Optional[int] = None) -> Iterator[np.ndarray]:
        """The tokens of one prompt after its generation ended (token_times times them)."""
        if len(prompts) != 1:
            raise GenerationError(f"{self.runtime} decodes one prompt at a time here")
        for token in self.generate(prompts[0], max_new_tokens, eos_id):
            yield np.array([token], dtype=np.int64)

    def prefill_logits(self, prompt_ids: Sequence[int]) -> np.ndarray:
        raise GenerationError(f"{self.runtime} gives no logits here")


# -- tokenizer -----------------------------------------------------------------------------------------


class TextTokenizer:
    """encode(text) -> list of ids, decode(ids) -> text; `backend` says which package does it."""

    def __init__(self, backend: str, impl):
        self.backend = backend
        self._impl = impl

    def encode(self, text: str) -> List[int]:
        if self.backend == "tokenizers":
            return list(self._impl.encode(text).ids)
        return [int(t) for t in self._impl.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        if self.backend == "tokenizers":
            return self._impl.decode([int(t) for t in ids], skip_special_tokens=True)
        return self._impl.decode(np.asarray(list(ids), dtype=np.int32))


def load_tokenizer(folder, model=None) -> TextTokenizer:
    """The folder's tokenizer without transformers: `tokenizers` on tokenizer.json, else onnxruntime-genai's
    og.Tokenizer (given `model`, an og.Model or a genai GreedyGenerator, its model is reused)."""
    folder = Path(folder)
    try:
        from tokenizers import Tokenizer
    except ImportError:
        Tokenizer = None
    if Tokenizer is not None and (folder / "tokenizer.json").is_file():
        return TextTokenizer("tokenizers", Tokenizer.from_file(str(folder / "tokenizer.json")))
    try:
        import onnxruntime_genai as og
    except ImportError as e:
        raise GenerationError(f"{folder}: no tokenizer (needs the tokenizers package and tokenizer.json, "
                              "or onnxruntime_genai)") from e
    if isinstance(model, GreedyGenerator):
        model = model._og_model
    return TextTokenizer("genai", og.Tokenizer(model if model is not None else og.Model(str(folder))))
