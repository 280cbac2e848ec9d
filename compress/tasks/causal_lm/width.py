"""Width pruning of a causal LM (Minitron, Muralidharan et al. 2024, "Compact Language Models via Pruning and
Knowledge Distillation"): attention heads and MLP channels, ranked by their activations on calibration blocks.

Minitron's activation-based importance, one forward pass:
- an MLP channel: the mean |activation| entering the down projection (Llama's act(gate) * up, GPT-2's GELU(fc));
- an attention head: the mean L2 norm of its output (the head's slice of the input to the output projection).
With grouped-query attention the query heads that share a key/value head go together: a KV group's importance is
its heads' sum, and whole groups are kept, so the model's cache stays a plain GQA cache.

- a hidden (embedding) channel: the mean |activation| of the normalized hidden states, summed over every norm
  that feeds a projection (each layer's two and the final one): Minitron's LayerNorm-output importance.

Every layer keeps the same counts (a Hugging Face config holds one size for all layers), each layer its own most
important heads and channels; hidden channels are one set for the whole model (the residual stream). The pruned
model is an ordinary model of the smaller config: it saves, loads and exports like any other. Heads and MLP
channels come out exactly (the pruned model computes what the teacher computes with them silenced); pruning
hidden channels also changes what the RMS norms divide by, so it is an approximation KD then repairs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from compress.core.errors import UsageError
from compress.tasks.causal_lm.models import decoder_layers


@dataclass
class WidthImportance:
    heads: list[torch.Tensor] | None          # per layer [heads]; None where the architecture's heads are not pruned
    channels: list[torch.Tensor]              # per layer [intermediate]
    hidden: torch.Tensor | None = None        # [hidden] (Llama-style models)


def _is_llama_like(layer) -> bool:
    attention, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    return all(hasattr(attention, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")) and \
        all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj"))


def _is_gpt2(layer) -> bool:
    return hasattr(layer, "attn") and hasattr(getattr(layer, "mlp", None), "c_fc")


def architecture(model) -> str:
    first = decoder_layers(model)[0]
    if _is_llama_like(first):
        return "llama"
    if _is_gpt2(first):
        return "gpt2"
    raise UsageError(f"{type(model).__name__}: width pruning knows Llama-style (q/k/v/o and gate/up/down "
                     "projections) and GPT-2 blocks")


def sizes(model) -> dict[str, int]:
    """heads, kv_heads, head_dim and intermediate of `model` (its config's)."""
    config = model.config
    if architecture(model) == "llama":
        heads = config.num_attention_heads
        return {"heads": heads, "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
                "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
                "intermediate": config.intermediate_size, "hidden": config.hidden_size}
    return {"heads": config.n_head, "kv_heads": config.n_head, "head_dim": config.n_embd // config.n_head,
            "intermediate": config.n_inner or 4 * config.n_embd, "hidden": config.n_embd}


def width_importance(model, batch: torch.Tensor) -> WidthImportance:
    """Each layer's head and MLP-channel importance on `batch` [B, T] of token ids."""
    kind, shape = architecture(model), sizes(model)
    heads: list[torch.Tensor] = []
    channels: list[torch.Tensor] = []
    hooks = []

    def on_attention_output(module, inputs):
        x = inputs[0].detach().float()
        per_head = x.reshape(*x.shape[:-1], -1, shape["head_dim"]).norm(dim=-1)
        heads.append(per_head.flatten(0, -2).mean(0))

    def on_mlp_hidden(module, inputs):
        channels.append(inputs[0].detach().float().abs().flatten(0, -2).mean(0))

    normalized: list[torch.Tensor] = []

    def on_norm_output(module, inputs, output):
        normalized.append(output.detach().float().abs().flatten(0, -2).mean(0))

    for layer in decoder_layers(model):
        if kind == "llama":
            hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(on_attention_output))
            hooks.append(layer.mlp.down_proj.register_forward_pre_hook(on_mlp_hidden))
            hooks += [layer.input_layernorm.register_forward_hook(on_norm_output),
                      layer.post_attention_layernorm.register_forward_hook(on_norm_output)]
        else:
            hooks.append(layer.mlp.c_proj.register_forward_pre_hook(on_mlp_hidden))
    if kind == "llama":
        hooks.append(model.model.norm.register_forward_hook(on_norm_output))
    try:
        with torch.no_grad():
            model.eval()(input_ids=batch)
    finally:
        for hook in hooks:
            hook.remove()
    hidden = torch.stack(normalized).sum(0) if normalized else None
    return WidthImportance(heads if kind == "llama" else None, channels, hidden)


def check_width(model, heads: int | None, intermediate: int | None,
                hidden: int | None = None) -> tuple[str, str] | None:
    """(field, why) when `model` cannot be pruned to these widths; None when it can."""
    kind, shape = architecture(model), sizes(model)
    if hidden is not None:
        if kind != "llama":
            return "hidden", "GPT-2's attention is as wide as its hidden size: prune its intermediate or layers"
        if hidden >= shape["hidden"]:
            return "hidden", f"{hidden} channels is not fewer than the teacher's {shape['hidden']}"
    if heads is not None:
        if kind != "llama":
            return "heads", ("GPT-2's attention is as wide as its hidden size, which is not pruned: prune its "
                             "intermediate or layers")
        group = shape["heads"] // shape["kv_heads"]
        if heads >= shape["heads"]:
            return "heads", f"{heads} heads is not fewer than the teacher's {shape['heads']}"
        if heads % group:
            return "heads", (f"the teacher's {shape['heads']} query heads share {shape['kv_heads']} key/value heads in "
                             f"groups of {group}, kept or dropped whole: heads must be a multiple of {group}")
    if intermediate is not None and intermediate >= shape["intermediate"]:
        return "intermediate", f"{intermediate} channels is not fewer than the teacher's {shape['intermediate']}"
    return None


def _rows(weight: torch.Tensor, index: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(weight.detach().index_select(0, index).clone())


def _columns(weight: torch.Tensor, index: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(weight.detach().index_select(1, index).clone())


def _linear_rows(linear: torch.nn.Linear, index: torch.Tensor) -> None:
    linear.weight = _rows(linear.weight, index)
    if linear.bias is not None:
        linear.bias = _rows(linear.bias, index)
    linear.out_features = len(index)


def _linear_columns(linear: torch.nn.Linear, index: torch.Tensor) -> None:
    linear.weight = _columns(linear.weight, index)
    linear.in_features = len(index)


def _top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The indices of the `count` highest scores, in their original order."""
    return torch.sort(torch.topk(scores, count).indices).values


def prune_width(model, importance: WidthImportance, heads: int | None = None, intermediate: int | None = None,
                hidden: int | None = None):
    """A copy of `model` keeping, in every layer, its `heads` most important query heads (whole KV groups) and
    `intermediate` most important MLP channels, and the model's `hidden` most important hidden channels; None
    leaves that width as it is."""
    problem = check_width(model, heads, intermediate, hidden)
    if problem:
        raise UsageError(f"{problem[0]}: {problem[1]}")
    kind, shape = architecture(model), sizes(model)
    pruned = copy.deepcopy(model)
    group = shape["heads"] // shape["kv_heads"]
    dim = shape["head_dim"]
    for number, layer in enumerate(decoder_layers(pruned)):
        if intermediate is not None:
            keep = _top(importance.channels[number], intermediate)
            if kind == "llama":
                _linear_rows(layer.mlp.gate_proj, keep)
                _linear_rows(layer.mlp.up_proj, keep)
                _linear_columns(layer.mlp.down_proj, keep)
            else:  # GPT-2's Conv1D holds its weight as [in, out]
                layer.mlp.c_fc.weight = _columns(layer.mlp.c_fc.weight, keep)
                layer.mlp.c_fc.bias = _rows(layer.mlp.c_fc.bias, keep)
                layer.mlp.c_fc.nf = len(keep)
                layer.mlp.c_proj.weight = _rows(layer.mlp.c_proj.weight, keep)
        if heads is not None:
            groups = importance.heads[number].reshape(shape["kv_heads"], group).sum(-1)
            kept_groups = _top(groups, heads // group)
            query_heads = (kept_groups[:, None] * group + torch.arange(group)).flatten()
            query_rows = (query_heads[:, None] * dim + torch.arange(dim)).flatten()
            kv_rows = (kept_groups[:, None] * dim + torch.arange(dim)).flatten()
            attention = layer.self_attn
            _linear_rows(attention.q_proj, query_rows)
            _linear_rows(attention.k_proj, kv_rows)
            _linear_rows(attention.v_proj, kv_rows)
            _linear_columns(attention.o_proj, query_rows)
    if hidden is not None:
        _prune_hidden(pruned, _top(importance.hidden, hidden))
    config = pruned.config
    if hidden is not None:
        config.hidden_size = hidden
        config.head_dim = dim
    if intermediate is not None:
        setattr(config, "intermediate_size" if kind == "llama" else "n_inner", intermediate)
    if heads is not None:
        config.num_attention_heads = heads
        config.num_key_value_heads = heads // group
        config.head_dim = dim  # no longer hidden_size // heads
    return pruned


def _prune_hidden(model, keep: torch.Tensor) -> None:
    """Keep the residual stream's channels `keep` everywhere it is read or written (Llama-style)."""
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    embed = model.model.embed_tokens
    embed.weight = _columns(embed.weight, keep)
    embed.embedding_dim = len(keep)
    for layer in decoder_layers(model):
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight = _rows(norm.weight, keep)
        attention, mlp = layer.self_attn, layer.mlp
        for reads in (attention.q_proj, attention.k_proj, attention.v_proj, mlp.gate_proj, mlp.up_proj):
            _linear_columns(reads, keep)
        for writes in (attention.o_proj, mlp.down_proj):
            _linear_rows(writes, keep)
    model.model.norm.weight = _rows(model.model.norm.weight, keep)
    if tied:
        model.lm_head.weight = embed.weight
    else:
        _linear_columns(model.lm_head, keep)
