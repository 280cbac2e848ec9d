"""Text classifiers: `hf-config:ARCH` (a Transformers architecture built here from a few sizes, random weights,
so everything runs offline) and `hf:FOLDER` holding a sequence classifier (config.json + model.safetensors).

Every text model is wrapped so that its forward takes the token tensors by name and returns the logits alone,
which is what training, export and every engine expect of a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from compress.core.errors import UsageError

# Our short size names -> each architecture's config keys; the intermediate width defaults to 4 x hidden.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "bert": {"config": "BertConfig", "model": "BertForSequenceClassification", "token_types": True,
             "keys": {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
                      "intermediate": "intermediate_size", "dropout": "hidden_dropout_prob"},
             "positions": "max_position_embeddings"},
    "distilbert": {"config": "DistilBertConfig", "model": "DistilBertForSequenceClassification", "token_types": False,
                   "keys": {"layers": "n_layers", "hidden": "dim", "heads": "n_heads", "intermediate": "hidden_dim",
                            "dropout": "dropout"},
                   "positions": "max_position_embeddings"},
}
DEFAULT_SIZES = {"layers": 4, "hidden": 128, "heads": 4}


class TextLogits(nn.Module):
    """A Hugging Face sequence classifier whose forward(input_ids, attention_mask, token_type_ids) gives logits."""

    def __init__(self, model: nn.Module, token_types: bool):
        super().__init__()
        self.model = model
        self.token_types = token_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {"token_type_ids": token_type_ids} if self.token_types and token_type_ids is not None else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **extra).logits


def check_hf_config(arch: str, kwargs: dict[str, Any] | None = None) -> str | None:
    if arch not in ARCHITECTURES:
        return f"unknown hf-config architecture '{arch}'; known: {', '.join(sorted(ARCHITECTURES))}"
    unknown = sorted(set(kwargs or {}) - set(ARCHITECTURES[arch]["keys"]))
    if unknown:
        return f"hf-config:{arch} has no size '{unknown[0]}'; sizes: {', '.join(ARCHITECTURES[arch]['keys'])}"
    sizes = {**DEFAULT_SIZES, **(kwargs or {})}
    if sizes["hidden"] % sizes["heads"]:
        return f"hidden {sizes['hidden']} is not a multiple of heads {sizes['heads']}"
    return None


def build_hf_config(arch: str, vocab_size: int, max_length: int, num_classes: int, kwargs: dict[str, Any]) -> TextLogits:
    """A fresh `arch` classifier sized by kwargs (layers, hidden, heads, intermediate, dropout)."""
    import transformers

    problem = check_hf_config(arch, kwargs)
    if problem:
        raise UsageError(problem)
    entry = ARCHITECTURES[arch]
    sizes = {**DEFAULT_SIZES, **kwargs}
    sizes.setdefault("intermediate", 4 * sizes["hidden"])
    options = {entry["keys"][key]: value for key, value in sizes.items()}
    options[entry["positions"]] = max(512, max_length)
    config = getattr(transformers, entry["config"])(vocab_size=vocab_size, num_labels=num_classes, **options)
    config._attn_implementation = "eager"  # traces into plain MatMul/Softmax for every ONNX exporter and engine
    model = getattr(transformers, entry["model"])(config)
    return TextLogits(model, entry["token_types"])


def build_hf_text(folder: str, num_classes: int, kwargs: dict[str, Any]) -> TextLogits:
    """The sequence classifier config.json describes, with the data's classes, fresh weights."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, num_labels=num_classes, **kwargs)
    except (OSError, ValueError) as error:
        raise UsageError(f"{Path(folder) / 'config.json'}: {str(error).splitlines()[0]}") from None
    config.id2label = {i: str(i) for i in range(num_classes)}
    config.label2id = {str(i): i for i in range(num_classes)}
    config._attn_implementation = "eager"
    model = AutoModelForSequenceClassification.from_config(config)
    return TextLogits(model, getattr(config, "type_vocab_size", 0) > 0)


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The encoder's ModuleList of Transformer layers (bert.encoder.layer, distilbert.transformer.layer)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] == "layer":
            return module
    raise UsageError(f"{type(model).__name__}: no encoder layer list to initialise from")


def init_every_other(student: nn.Module, teacher: nn.Module) -> list[int]:
    """DistilBERT's initialisation (Sanh et al. 2019, arXiv:1910.01108): the student takes the teacher's
    embeddings and one layer out of every two. Returns the teacher layers copied; widths must match."""
    s_layers, t_layers = layer_list(student), layer_list(teacher)
    step = max(1, len(t_layers) // len(s_layers))
    chosen = [i * step for i in range(len(s_layers))]
    if chosen[-1] >= len(t_layers):
        raise UsageError(f"the student has {len(s_layers)} layers, the teacher {len(t_layers)}: "
                         "init_from_teacher needs a teacher with at least as many")
    for student_layer, index in zip(s_layers, chosen):
        _copy_matching(student_layer, t_layers[index], f"teacher layer {index}")
    s_embed = _named(student, "embeddings")
    t_embed = _named(teacher, "embeddings")
    _copy_matching(s_embed, t_embed, "embeddings")
    return chosen


def _named(model: nn.Module, last: str) -> nn.Module:
    for name, module in model.named_modules():
        if name.split(".")[-1] == last:
            return module
    raise UsageError(f"{type(model).__name__}: no '{last}' module")


def _copy_matching(target: nn.Module, source: nn.Module, what: str) -> None:
    own, theirs = target.state_dict(), source.state_dict()
    for key, value in own.items():
        if key not in theirs or tuple(theirs[key].shape) != tuple(value.shape):
            shape = tuple(theirs[key].shape) if key in theirs else "missing"
            raise UsageError(f"{what}: '{key}' is {shape} in the teacher, {tuple(value.shape)} "
                             "in the student (widths and heads must match)")
    target.load_state_dict(theirs)
