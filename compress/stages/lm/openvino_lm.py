"""A causal LM as a stateful OpenVINO IR with NNCF weight compression: the folder openvino-genai's LLMPipeline runs.

optimum-intel makes this form but pins other transformers and tokenizers releases than this toolchain's, so the
export is done here the way it does it (learned from its `patch_stateful`):
1. trace the model with its KV cache as plain tensors in and out (`past_key_values.N.key/value` ->
   `present.N.key/value`; transformers' cache object is rebuilt inside the traced function) and convert it with
   `openvino.convert_model`, batch, sequence and past length dynamic;
2. add `beam_idx` (gathers the cache rows, what openvino-genai feeds) and make the cache the model's state
   (`apply_make_stateful_transformation`), its initial value zeros of the batch `input_ids` has;
3. int8 / int4: `nncf.compress_weights` (INT8_ASYM; INT4_SYM with the group size of `block_size`, ratio 1.0, a
   smaller group where a width is not a multiple of it; NNCF keeps the embeddings and the last MatMul in int8);
4. the tokenizer as OpenVINO models (`openvino_tokenizers.convert_tokenizer`, with the detokenizer), and the
   config, generation config and tokenizer.json beside them.

The export and openvino-genai's own decoding run in a child process (`python -m compress.stages.lm.openvino_lm`),
as onnxruntime-genai's model builder does: openvino-tokenizers and openvino-genai load native extensions into
OpenVINO that the calling process (the pipeline, the test suite) then never holds, and the export's memory goes
with the child.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from compress.core.errors import StageFailed

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class _CacheAsTensors(torch.nn.Module):
    """The model with its KV cache as flat tensors: what a trace, and so OpenVINO, can take."""

    def __init__(self, model, layers: int):
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.layers):  # set, not update(): an update concatenates onto an empty 1-D tensor
            layer = cache.layers[i]
            layer.lazy_initialization(past[2 * i], past[2 * i + 1])
            layer.keys, layer.values = past[2 * i], past[2 * i + 1]
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        presents = []
        for layer in out.past_key_values.layers:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


def _cache_shape(config) -> tuple[int, int, int]:
    """(layers, kv heads, head size) of a Llama-style or GPT-2 config."""
    heads = config.num_attention_heads
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(layers), int(kv_heads), int(head_dim)


def convert_stateful(model):
    """The stateful ov.Model of a transformers causal LM (steps 1 and 2 above)."""
    import openvino as ov
    from openvino import opset13
    from openvino._offline_transformations import apply_make_stateful_transformation

    layers, kv_heads, head_dim = _cache_shape(model.config)
    batch, length, past = 2, 3, 4
    example = (torch.ones(batch, length, dtype=torch.int64), torch.ones(batch, past + length, dtype=torch.int64),
               torch.arange(past, past + length).expand(batch, length),
               *[torch.zeros(batch, kv_heads, past, head_dim) for _ in range(2 * layers)])
    cache_in = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    cache_out = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    with torch.no_grad():
        converted = ov.convert_model(_CacheAsTensors(model.eval(), layers), example_input=example)
    for port, name in zip(converted.inputs, ["input_ids", "attention_mask", "position_ids", *cache_in]):
        port.get_tensor().set_names({name})
    for port, name in zip(converted.outputs, ["logits", *cache_out]):
        port.get_tensor().set_names({name})
    converted.reshape({port: ov.PartialShape([-1, kv_heads, -1, head_dim]) if name in cache_in else
                       ov.PartialShape([-1, -1]) for port, name in
                       zip(converted.inputs, ["input_ids", "attention_mask", "position_ids", *cache_in])})
    beam_idx = opset13.parameter(name="beam_idx", dtype=ov.Type.i32, shape=ov.PartialShape([-1]))
    beam_idx.output(0).get_tensor().add_names({"beam_idx"})
    converted.add_parameters([beam_idx])
    for name in cache_in:
        port = converted.input(name)
        consumers = port.get_target_inputs()
        gathered = opset13.gather(port, beam_idx, opset13.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gathered.output(0))
    converted.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(converted, dict(zip(cache_in, cache_out)))
    rows = opset13.gather(opset13.shape_of(converted.input("input_ids"), output_type="i64"),
                          opset13.constant([0]), opset13.constant(0))
    for op in converted.get_ops():
        if op.get_type_name() == "ReadValue":  # the state starts as zeros of this batch, no past
            dims = [rows] + [opset13.constant(np.array([d.get_length() if d.is_static else 0], dtype=np.int64))
                             for d in list(op.get_output_partial_shape(0))[1:]]
            op.set_arguments([opset13.broadcast(opset13.constant(0.0, dtype=op.get_output_element_type(0)),
                                                opset13.concat(dims, axis=0))])
    converted.validate_nodes_and_infer_types()
    return converted


def compress_weights(converted, precision: str, group_size: int):
    import nncf

    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters

    if precision == "int8":
        return nncf.compress_weights(converted, mode=nncf.CompressWeightsMode.INT8_ASYM)
    # A width the group size does not divide (a pruned hidden size of 48 with groups of 32) takes NNCF's adjusted,
    # smaller group for that layer rather than failing the build.
    advanced = AdvancedCompressionParameters(group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST,
                                             min_adjusted_group_size=min(16, group_size))
    return nncf.compress_weights(converted, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=group_size, ratio=1.0,
                                 advanced_parameters=advanced)


def _in_child(*args: str) -> str:
    """Run this module's `main` with `args` in a child process; its stdout, or StageFailed with its last line."""
    done = subprocess.run([sys.executable, "-m", "compress.stages.lm.openvino_lm", *args], capture_output=True,
                          text=True)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise StageFailed("build", lines[-1] if lines else f"openvino_lm {args[0]} exited {done.returncode}")
    return done.stdout


def export_openvino(hf_folder: Path, outs: dict[str, Path], group_size: int = 32) -> None:
    """openvino-genai folders of the Hugging Face folder `hf_folder`, one per precision (fp32, int8, int4) in
    `outs`, made in one child process (one start of torch, OpenVINO and NNCF for them all)."""
    _in_child("export", str(hf_folder), json.dumps({p: str(out) for p, out in outs.items()}), str(group_size))


def genai_greedy(folders: list[Path], prompts: list[list[int]], new_tokens: int) -> list[list[list[int]]]:
    """Greedy tokens of each prompt by openvino-genai's own LLMPipeline (what a user of the folder runs), per
    folder, all in one child process."""
    return json.loads(_in_child("greedy", json.dumps([str(f) for f in folders]), json.dumps(prompts),
                                str(new_tokens)).splitlines()[-1])


def _export(hf_folder: Path, outs: dict[str, Path], group_size: int) -> None:
    import openvino as ov
    import transformers
    from openvino_tokenizers import convert_tokenizer

    from compress.tasks.causal_lm.models import load_lm

    model = load_lm(hf_folder)
    tokenizer, detokenizer = convert_tokenizer(transformers.AutoTokenizer.from_pretrained(hf_folder),
                                               with_detokenizer=True)
    for precision, out in outs.items():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        try:
            converted = convert_stateful(model)  # a fresh graph per precision: NNCF compresses in place
        except Exception as error:  # a model the trace or OpenVINO's frontend cannot take: one line, the cause
            message = str(error).strip()
            raise StageFailed("build", f"OpenVINO could not convert {hf_folder.name}: "
                                       f"{message.splitlines()[-1] if message else repr(error)}") from None
        if precision != "fp32":
            converted = compress_weights(converted, precision, group_size)
        ov.save_model(converted, out / "openvino_model.xml", compress_to_fp16=False)
        model.config.save_pretrained(out)
        model.generation_config.save_pretrained(out)
        for name in TOKENIZER_FILES:
            if (hf_folder / name).is_file():
                shutil.copy2(hf_folder / name, out / name)
        ov.save_model(tokenizer, out / "openvino_tokenizer.xml")
        ov.save_model(detokenizer, out / "openvino_detokenizer.xml")


def _genai_greedy(folders: list[Path], prompts: list[list[int]], new_tokens: int) -> list[list[list[int]]]:
    import openvino as ov
    import openvino_genai

    config = openvino_genai.GenerationConfig()
    config.max_new_tokens, config.do_sample = new_tokens, False
    found = []
    for folder in folders:
        pipeline = openvino_genai.LLMPipeline(str(folder), "CPU", INFERENCE_PRECISION_HINT="f32")
        found.append([[int(t) for t in pipeline.generate(ov.Tensor(np.array([prompt], dtype=np.int64)),
                                                          config).tokens[0]] for prompt in prompts])
        del pipeline
    return found


def main(argv: list[str]) -> int:
    """`export HF {PRECISION: OUT} GROUP` or `greedy [FOLDER] PROMPTS_JSON NEW_TOKENS` (prints the tokens as
    JSON)."""
    try:
        if argv[0] == "export":
            _export(Path(argv[1]), {p: Path(out) for p, out in json.loads(argv[2]).items()}, int(argv[3]))
        else:
            print(json.dumps(_genai_greedy([Path(f) for f in json.loads(argv[1])], json.loads(argv[2]),
                                           int(argv[3]))))
    except StageFailed as error:
        print(str(error).removeprefix(f"stage {error.stage} failed: "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
