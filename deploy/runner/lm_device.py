"""A causal LM's release on the device: the greedy check before the switch, its tokens/s, and `generate`.

Travels in a causal LM's bundle beside runner.py, which loads it from the release folder for `smoke`,
`bench` and `generate` when the release's manifest carries generation settings (`generation`): the
prompts' token ids, max_new_tokens, the host's greedy tokens for them from the same engine folder and
the agreement the device must reach (1.0 for an fp32 folder: identical tokens). The engine folder
(onnxruntime-genai's: genai_config.json, model.onnx, tokenizer.json) is the release's `model_folder`;
generation.py runs it with onnxruntime-genai where it is installed, else with the plain ONNX Runtime
loop over the KV cache, and turns text into tokens with `tokenizers` (or onnxruntime-genai's own). An
OpenVINO IR folder runs with openvino-genai's LLMPipeline where it is installed, else with ov_generation.py's
loop over the stateful model; both on the host's execution (SDPA attention, f32), so fp32 tokens stay identical.

  smoke     the shipped prompts decoded greedily and compared with the host's tokens, position by position;
            below the bundle's agreement it fails, so the deploy stops before `current` is switched
  bench     the same check, then batch-1 generation timed with time_generation (the host's timing loop)
  generate  a text prompt -> the greedy continuation as text
"""

from __future__ import annotations

from pathlib import Path

try:  # on the host: the deploy.runner package
    from . import decode_timing, generation, ov_generation, releases, runner, trtllm_device
except ImportError:  # on the device: loaded by runner.py from the release folder
    import decode_timing
    import generation
    import ov_generation
    import releases
    import runner
    import trtllm_device


def settings_of(manifest: dict) -> dict:
    settings = manifest.get("generation")
    if not isinstance(settings, dict):
        raise runner.RunnerError("this release does not generate text (its manifest.json has no generation "
                                 "settings): use `infer` or `bench`")
    return settings


def folder_of(release: Path, manifest: dict) -> Path:
    return release / manifest.get("model_folder", "model")


ONNX_BACKENDS = ("auto", "genai", "onnxruntime")
OPENVINO_BACKENDS = ("auto", "openvino-genai", "openvino")


def open_generator(release: Path, manifest: dict, threads: int | None = None, backend: str = "auto"):
    """The release's engine folder as a generator. An onnxruntime-genai folder: onnxruntime-genai, else the plain
    ONNX Runtime loop; an OpenVINO IR folder: openvino-genai's LLMPipeline, else the loop over the stateful model
    (`backend` picks one of them; "auto": the runtime's own generator where installed)."""
    folder = folder_of(release, manifest)
    if builds_engine(manifest):
        if backend not in ("auto", "tensorrt-llm"):
            raise runner.RunnerError(f"--backend {backend}: this release runs a TensorRT-LLM engine; one of auto, "
                                     "tensorrt-llm")
        try:
            return trtllm_device.TensorRTLLMGenerator(release, manifest, threads)
        except generation.GenerationError as error:
            raise runner.RunnerError(str(error)) from None
    openvino = (folder / "openvino_model.xml").is_file()
    if not (folder / "genai_config.json").is_file() and not openvino:
        raise runner.RunnerError(f"{folder}: neither genai_config.json nor openvino_model.xml (the release's engine "
                                 "folder)")
    allowed = OPENVINO_BACKENDS if openvino else ONNX_BACKENDS
    if backend not in allowed:
        kind = "an OpenVINO IR folder" if openvino else "an onnxruntime-genai folder"
        raise runner.RunnerError(f"--backend {backend}: this release ships {kind}; one of {', '.join(allowed)}")
    try:
        if openvino and (backend == "openvino-genai" or
                         (backend == "auto" and ov_generation.openvino_genai_installed())):
            return ov_generation.OpenVINOGenAIGenerator(str(folder), threads=threads)
        return ov_generation.open_generator(str(folder), backend=backend, threads=threads)
    except ImportError as error:
        raise runner.RunnerError(f"the engine's runtime cannot be imported on this device: {error}") from None
    except generation.GenerationError as error:
        raise runner.RunnerError(str(error)) from None


def builds_engine(manifest: dict) -> bool:
    """Whether the release's engine is TensorRT-LLM's, built on this device from its Hugging Face folder."""
    return (manifest.get("engine") or {}).get("builder") == "tensorrt_llm"


def build_engine(release: Path) -> dict:
    """`runner.py build-engine RELEASE` of a causal LM: TensorRT-LLM builds the engine into the release."""
    manifest = releases.read_manifest(release)
    if not builds_engine(manifest):
        raise runner.RunnerError(f"{release}: this release ships its engine built (runtime {manifest.get('runtime')}); "
                                 "there is none to build here")
    try:
        built = trtllm_device.build_engine(release, manifest)
    except generation.GenerationError as error:
        raise runner.RunnerError(str(error)) from None
    runner.log(f"TensorRT-LLM {built['tensorrt_llm']} built the {built['settings'].get('dtype', '?')} engine in "
               f"{built['seconds']:.1f} s ({built['engine_mb']:.1f} MB)")
    return built


def backend_name(generator) -> str:
    return {"genai": "onnxruntime-genai", "openvino": "openvino", "openvino-genai": "openvino-genai",
            "tensorrt-llm": "tensorrt-llm"}.get(generator.backend, "onnxruntime")


def greedy_check(generator, settings: dict) -> dict:
    """The shipped prompts decoded greedily here against the host's tokens: the share of positions that agree
    (a sequence that is shorter or longer counts its missing positions as disagreeing), prompts identical."""
    prompts, expected = settings["prompts"], settings["host_tokens"]
    if len(prompts) != len(expected) or not prompts:
        raise runner.RunnerError(f"manifest.json: generation: {len(prompts)} prompts but host tokens for "
                                 f"{len(expected)}")
    produced_all = [generator.generate(prompt, int(settings["max_new_tokens"])) for prompt in prompts]
    found = generation.greedy_agreement(produced_all, expected)
    return {**found, "agreement": round(found["agreement"], 6), "min_agreement": float(settings["min_agreement"]),
            "agreement_from": settings.get("agreement_from"), "backend": backend_name(generator),
            "tokens": produced_all}


def require_agreement(check: dict) -> None:
    """Refuse, in one line, a device whose greedy tokens agree with the host's less than the bundle asks."""
    if check["agreement"] + 1e-9 >= check["min_agreement"]:
        return
    why = f" ({check['agreement_from']})" if check.get("agreement_from") else ""
    raise runner.RunnerError(
        f"greedy tokens on the device agree with the host's on {check['agreement']:.2%} of positions "
        f"({check['identical_prompts']}/{check['prompts']} prompts identical, {check['backend']}), below the "
        f"{check['min_agreement']:.2%} this bundle requires{why}")


def smoke(release: Path, threads: int | None = None) -> dict:
    """The greedy check: what the deploy runs before it switches `current` to this release."""
    manifest = releases.read_manifest(release)
    settings = settings_of(manifest)
    generator = open_generator(release, manifest, threads)
    check = greedy_check(generator, settings)
    require_agreement(check)
    check.pop("tokens")
    return {"smoke": "ok", "providers": [check["backend"]], "generation": check}


def timed_prompt(settings: dict) -> list:
    """The shipped prompt whose host continuation is longest: decode tokens/s over as many tokens as there are."""
    pairs = list(zip(settings["prompts"], settings["host_tokens"]))
    return max(pairs, key=lambda pair: len(pair[1]))[0]


def folder_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 4)


def bench(release: Path, threads: int | None = None, rounds: int | None = None) -> dict:
    """The greedy check again, then batch-1 generation timed as the host times it: one row."""
    manifest = releases.read_manifest(release)
    settings = settings_of(manifest)
    generator = open_generator(release, manifest, threads)
    check = greedy_check(generator, settings)
    require_agreement(check)
    rounds = rounds or int(settings.get("rounds", 3))
    prompt = timed_prompt(settings)
    timed = decode_timing.time_generation(generator, prompt, int(settings["max_new_tokens"]), rounds=rounds)
    tokens_per_s = timed["new_tokens"] / timed["total_s"] if timed["total_s"] > 0 else None
    decode = timed["decode_tokens_per_s"]
    row = {"model": manifest.get("model"), "artifact": manifest["artifact"], "backend": check["backend"],
           "precision": manifest["precision"], "batch_size": 1, "prompt_tokens": len(prompt),
           "new_tokens": timed["new_tokens"], "rounds": rounds, "timer": "time_generation",
           "time_to_first_token_s": round(timed["time_to_first_token_s"], 6),
           "ttft_s": {str(len(prompt)): round(timed["time_to_first_token_s"], 6)},
           "decode_tokens_per_s": {"1": None if decode is None else round(decode, 3)},
           "tokens_per_s": None if tokens_per_s is None else round(tokens_per_s, 3),
           "total_s": round(timed["total_s"], 6), "size_mb": folder_mb(generator.folder),
           "providers": getattr(generator, "providers", None) or [check["backend"]],
           "agreement_on": f"the greedy tokens of {check['prompts']} prompts",
           "accuracy": {"agreement_with_host": check["agreement"], "identical_prompts": check["identical_prompts"],
                        "prompts": check["prompts"], "min_agreement": check["min_agreement"]}}
    runner.log(f"greedy tokens agree with the host's on {check['agreement']:.2%} of positions; "
               f"{row['tokens_per_s'] or 0:.1f} tokens/s at batch 1 ({timed['new_tokens']} new tokens, "
               f"{generator.backend})")
    return {"rows": [row], "generation": {k: v for k, v in check.items() if k != "tokens"}}


def generate(release: Path, prompt: str, max_new_tokens: int | None = None, threads: int | None = None,
             backend: str = "auto") -> dict:
    """`runner.py generate RELEASE "prompt"`: the greedy continuation of a text prompt, as text."""
    manifest = releases.read_manifest(release)
    settings = settings_of(manifest)
    count = int(max_new_tokens if max_new_tokens is not None else settings["max_new_tokens"])
    if count < 1:
        raise runner.RunnerError(f"--max-new-tokens {count}: must be at least 1")
    generator = open_generator(release, manifest, threads, backend)
    try:
        tokenizer = generation.load_tokenizer(folder_of(release, manifest), model=generator)
    except generation.GenerationError as error:
        raise runner.RunnerError(f"{error}: pip install tokenizers (\"tokenizers<0.21\" on Python 3.8)") from None
    ids = tokenizer.encode(prompt)
    if not ids:
        raise runner.RunnerError("the prompt is empty: it tokenises to no token")
    tokens = generator.generate(ids, count)
    return {"prompt": prompt, "prompt_tokens": len(ids), "tokens": tokens, "text": tokenizer.decode(tokens),
            "backend": backend_name(generator), "tokenizer": tokenizer.backend}
