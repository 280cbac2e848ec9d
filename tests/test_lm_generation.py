"""deploy/runner/generation.py: greedy decoding of an onnxruntime-genai model folder, both backends.

A tiny random-weight Llama (byte-level BPE of 512 tokens trained on the standard library's own .py
files) is exported at fp32 and int4 by onnxruntime-genai's model builder once per module; the fp32
export must decode token for token as transformers' greedy generate does, on both backends.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

og = pytest.importorskip("onnxruntime_genai")
pytest.importorskip("onnx_ir")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from deploy.runner import generation  # noqa: E402
from deploy.runner.decode_timing import time_batch, time_generation  # noqa: E402
from deploy.runner.generation import GreedyGenerator, load_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("genai", "onnxruntime")
TEXTS = ("def main(argv):\n    return", "import os\nimport sys\n", "class Path(object):\n")
NEW_TOKENS = 24


def _build(hf_dir: Path, out_dir: Path, precision: str, cache_dir: Path) -> Path:
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", "hf", "-i", str(hf_dir),
               "-o", str(out_dir), "-p", precision, "-e", "cpu", "-c", str(cache_dir)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=str(out_dir.parent))
    assert result.returncode == 0, f"builder failed ({precision}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    for name in ("model.onnx", "genai_config.json", "tokenizer.json"):
        assert (out_dir / name).is_file(), f"builder wrote no {name} in {out_dir}"
    return out_dir


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("lm")
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:20]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(f) for f in files], trainer)
    hf_dir = root / "hf"
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                                bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.save_pretrained(hf_dir)
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(hf_dir)
    model.eval()
    cache = root / "cache"
    fp32 = _build(hf_dir, root / "fp32", "fp32", cache)
    int4 = _build(hf_dir, root / "int4", "int4", cache)
    prompts = [tok.encode(text).ids for text in TEXTS]
    return SimpleNamespace(hf_dir=hf_dir, model=model, tokenizer=fast, fp32=fp32, int4=int4, prompts=prompts,
                           generators={})


def _generator(lm, precision: str, backend: str) -> GreedyGenerator:
    """One generator per (precision, backend), shared by the tests: each opens the model once."""
    key = (precision, backend)
    if key not in lm.generators:
        lm.generators[key] = GreedyGenerator(getattr(lm, precision), backend=backend, threads=2)
    return lm.generators[key]


def _torch_greedy(lm, prompt, new_tokens):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_greedy_tokens_equal_torch(lm, backend):
    gen = _generator(lm, "fp32", backend)
    assert gen.backend == backend
    for prompt in lm.prompts:
        expected = _torch_greedy(lm, prompt, NEW_TOKENS)
        assert gen.generate(prompt, NEW_TOKENS) == expected


def test_prefill_logits_match_torch(lm):
    for backend in BACKENDS:
        gen = _generator(lm, "fp32", backend)
        for prompt in lm.prompts:
            with torch.no_grad():
                expected = lm.model(torch.tensor([prompt])).logits[0].numpy()
            logits = gen.prefill_logits(prompt)
            assert logits.shape == (len(prompt), 512) and logits.dtype == np.float32
            assert np.abs(logits - expected).max() < 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_equals_each_prompt_alone(lm, backend):
    gen = _generator(lm, "fp32", backend)
    length = min(len(p) for p in lm.prompts[:2])
    prompts = [p[:length] for p in lm.prompts[:2]]
    assert prompts[0] != prompts[1]
    batch = gen.generate_batch(prompts, 12)
    assert batch == [gen.generate(p, 12) for p in prompts]
    assert batch[0] != batch[1]
    with pytest.raises(ValueError, match="one length"):
        gen.generate_batch([prompts[0], prompts[1] + [5]], 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eos_stops(lm, backend):
    gen = _generator(lm, "fp32", backend)
    length = min(len(p) for p in lm.prompts[:2])
    prompt, other = (p[:length] for p in lm.prompts[:2])
    free = gen.generate(prompt, NEW_TOKENS)
    # The first token whose first occurrence is past the start: generation must end right on it.
    at = next(i for i, t in enumerate(free) if i >= 3 and t not in free[:i])
    eos = free[at]
    assert gen.generate(prompt, NEW_TOKENS, eos_id=eos) == free[:at + 1]
    # In a batch, only the row that meets the eos ends; the other goes on as it does alone.
    alone = gen.generate(other, NEW_TOKENS, eos_id=eos)
    assert gen.generate_batch([prompt, other], NEW_TOKENS, eos_id=eos) == [free[:at + 1], alone]
    assert len(alone) > at + 1


def test_int4_runs_on_both_backends_and_they_agree(lm):
    tokens = {}
    for backend in BACKENDS:
        gen = _generator(lm, "int4", backend)
        tokens[backend] = [gen.generate(p, NEW_TOKENS) for p in lm.prompts]
        assert all(len(t) == NEW_TOKENS for t in tokens[backend])
    # Both run the same MatMulNBits/GroupQueryAttention kernels (genai in its shared past/present buffer,
    # the plain loop with a growing past); here they agree on every token, asserted on the first 8 so a
    # tie broken otherwise late in a sequence does not fail the test.
    for genai_row, ort_row in zip(tokens["genai"], tokens["onnxruntime"]):
        assert genai_row[:8] == ort_row[:8]
    # int4 is really another model than fp32: its weights are quantized, its logits close but not equal.
    int4_logits = _generator(lm, "int4", "onnxruntime").prefill_logits(lm.prompts[0])
    fp32_logits = _generator(lm, "fp32", "onnxruntime").prefill_logits(lm.prompts[0])
    assert 0 < np.abs(int4_logits - fp32_logits).max() < 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_timing_positive(lm, backend):
    gen = _generator(lm, "fp32", backend)
    prompt = lm.prompts[0]
    single = time_generation(gen, prompt, 16, rounds=3)
    assert single["backend"] == backend and single["new_tokens"] == 16
    assert single["time_to_first_token_s"] > 0 and single["decode_tokens_per_s"] > 0
    batch = time_batch(gen, [prompt] * 4, 16, rounds=3)
    assert batch["batch"] == 4 and batch["new_tokens"] == 64
    assert batch["tokens_per_s"] > 0 and batch["decode_tokens_per_s"] > 0


def test_auto_backend_and_limits(lm):
    gen = GreedyGenerator(lm.fp32, threads=1)
    assert gen.backend == "genai"
    assert gen.eos_ids == (0,) and gen.context_length == 256
    assert gen.generate(lm.prompts[0], 0) == []
    with pytest.raises(ValueError, match="context_length"):
        gen.generate(lm.prompts[0], 256)
    with pytest.raises(ValueError, match="backend"):
        GreedyGenerator(lm.fp32, backend="torch")
    with pytest.raises(generation.GenerationError, match="genai_config"):
        GreedyGenerator(lm.hf_dir, backend="onnxruntime")


def test_tokenizer_without_transformers(lm, monkeypatch):
    text = TEXTS[0] + "\n" + TEXTS[2]
    tok = load_tokenizer(lm.fp32)
    assert tok.backend == "tokenizers"
    ids = tok.encode(text)
    assert ids == lm.tokenizer.encode(text)
    assert tok.decode(ids) == text
    # Without the tokenizers package: onnxruntime-genai's tokenizer, same ids and text.
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    og_tok = load_tokenizer(lm.fp32, model=_generator(lm, "fp32", "genai"))
    assert og_tok.backend == "genai"
    assert og_tok.encode(text) == ids
    assert og_tok.decode(ids) == text


def test_generation_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; sys.path.insert(0, 'deploy/runner'); import generation"
    result = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
