"""Hidden states and attention projections of a Transformer, through forward hooks (no model rewrite).

The layer list is found by shape, not by a model-specific path: the first ModuleList/Sequential whose
every child holds attention projections, either separate (`query/key/value` in BERT, RoBERTa, ELECTRA;
`q_lin/k_lin/v_lin` in DistilBERT; `q_proj/k_proj/v_proj`) or fused (`attn.qkv` in timm ViT/DeiT).
Layer 0 is the output of the `embeddings` module beside that list (Hugging Face) or else the input of
the first layer (timm: patches + position embeddings + class/distillation tokens).

Attention is rebuilt from Q and K by the losses rather than taken from `output_attentions`: Hugging
Face runs sdpa by default, which returns no attention probabilities, and asking for them would force
the slow eager path on every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SEPARATE_PROJECTIONS = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q_proj", "k_proj", "v_proj"))
HEAD_ATTRIBUTES = ("num_attention_heads", "n_heads", "num_heads")
LAYER_LISTS = (nn.ModuleList, nn.Sequential)


class NotATransformer(ValueError):
    """The model has no list of layers with attention projections that the taps understand."""


@dataclass
class TransformerInternals:
    """One forward's hidden states (index 0 = embeddings, i = output of layer i, each (B, L, H)) and
    the query/key/value projections of each layer (index 0 = layer 1, each (B, L, heads * d_head))."""

    hidden: list[torch.Tensor]
    queries: list[torch.Tensor]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    heads: int
    attention_mask: torch.Tensor | None = None  # (B, L), 1 = real token; None = every token is real

    @property
    def layers(self) -> int:
        return len(self.queries)

    def token_mask(self) -> torch.Tensor:
        """(B, L) bool, True at real tokens."""
        first = self.hidden[0]
        if self.attention_mask is None:
            return torch.ones(first.shape[:2], dtype=torch.bool, device=first.device)
        return self.attention_mask.to(first.device).bool()


@dataclass
class Projections:
    """Where one layer's Q, K, V come from: three Linears, or one fused `qkv` Linear of `attention`."""

    attention: nn.Module
    separate: tuple[nn.Module, nn.Module, nn.Module] | None
    fused: nn.Linear | None

    @property
    def input_width(self) -> int:
        first = self.fused if self.fused is not None else self.separate[0]
        return int(first.in_features)

    @property
    def query_width(self) -> int:
        return int(self.fused.out_features // 3 if self.fused is not None else self.separate[0].out_features)


@dataclass
class Layout:
    path: str  # of the layer list
    layers: list[nn.Module]
    projections: list[Projections]
    embeddings: nn.Module | None  # None: hidden[0] is the input of the first layer
    heads: int
    family: str


def layer_projections(layer: nn.Module) -> Projections | None:
    """The attention projections inside one layer, or None when it has none."""
    for _, module in layer.named_modules():
        for names in SEPARATE_PROJECTIONS:
            found = [getattr(module, name, None) for name in names]
            if all(isinstance(m, nn.Linear) for m in found):
                return Projections(module, tuple(found), None)
        if isinstance(getattr(module, "qkv", None), nn.Linear) and isinstance(getattr(module, "num_heads", None), int):
            return Projections(module, None, module.qkv)
    return None


def head_count(model: nn.Module, attention: nn.Module) -> int | None:
    for source in (attention, getattr(model, "config", None)):
        for name in HEAD_ATTRIBUTES:
            value = getattr(source, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def embeddings_beside(model: nn.Module, layers_path: str) -> nn.Module | None:
    """The `embeddings` module nearest above the layer list (`bert.encoder.layer` -> `bert.embeddings`)."""
    parts = layers_path.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        prefix = ".".join(parts[:depth] + ["embeddings"])
        try:
            return model.get_submodule(prefix)
        except AttributeError:
            continue
    return None


def find_layout(model: nn.Module) -> Layout:
    """Where the layers, projections and embeddings of `model` are; NotATransformer when it has none."""
    for path, module in model.named_modules():
        if not isinstance(module, LAYER_LISTS) or len(module) == 0:
            continue
        layers = list(module)
        projections = [layer_projections(layer) for layer in layers]
        if any(p is None for p in projections):
            continue
        heads = head_count(model, projections[0].attention)
        if heads is None:
            raise NotATransformer(f"{path}: attention layers found but no head count "
                                  f"(none of {', '.join(HEAD_ATTRIBUTES)} on the attention module or the config)")
        config = getattr(model, "config", None)
        fused = projections[0].fused is not None
        family = getattr(config, "model_type", None) or ("vit" if fused else "transformer")
        embeddings = None if fused else embeddings_beside(model, path)
        return Layout(path, layers, projections, embeddings, heads, family)
    raise NotATransformer(
        f"{type(model).__name__} is not a recognised Transformer: no list of layers with "
        "query/key/value, q_lin/k_lin/v_lin, q_proj/k_proj/v_proj or fused attn.qkv projections")


def describe_transformer(model: nn.Module) -> dict:
    """layers, hidden width, heads, family (plus the Q/K/V width and whether a DeiT distillation token
    exists) from module shapes alone, without a forward, so it works on the `meta` device."""
    layout = find_layout(model)
    first = layout.projections[0]
    return {"layers": len(layout.layers), "hidden": first.input_width, "heads": layout.heads,
            "family": layout.family, "attention_width": first.query_width,
            "distillation_token": getattr(model, "dist_token", None) is not None}


def first_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class TransformerTaps:
    """Records hidden states and Q/K/V at every forward; `take(mask)` hands them over and clears."""

    def __init__(self, model: nn.Module):
        self.layout = find_layout(model)
        self._hidden: dict[int, torch.Tensor] = {}
        self._qkv: dict[tuple[str, int], torch.Tensor] = {}
        self._handles = []
        layout = self.layout
        if layout.embeddings is not None:
            self._handles.append(layout.embeddings.register_forward_hook(self._hidden_recorder(0)))
        else:
            self._handles.append(layout.layers[0].register_forward_pre_hook(self._input_recorder(), with_kwargs=True))
        for i, (layer, projections) in enumerate(zip(layout.layers, layout.projections), start=1):
            self._handles.append(layer.register_forward_hook(self._hidden_recorder(i)))
            if projections.fused is not None:
                self._handles.append(projections.fused.register_forward_hook(self._fused_recorder(i, projections)))
            else:
                for role, linear in zip("qkv", projections.separate):
                    self._handles.append(linear.register_forward_hook(self._projection_recorder(role, i)))

    def _hidden_recorder(self, index: int):
        def record(module, inputs, output) -> None:
            self._hidden[index] = first_tensor(output)

        return record

    def _input_recorder(self):
        def record(module, args, kwargs) -> None:
            self._hidden[0] = args[0] if args else next(iter(kwargs.values()))

        return record

    def _projection_recorder(self, role: str, index: int):
        def record(module, inputs, output) -> None:
            self._qkv[role, index] = output

        return record

    def _fused_recorder(self, index: int, projections: Projections):
        """Split timm's (B, N, 3 * width) output into Q, K, V, with its q_norm/k_norm applied per head."""
        attention = projections.attention

        def normed(x: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
            if norm is None or isinstance(norm, nn.Identity):
                return x
            b, n, width = x.shape
            per_head = x.reshape(b, n, attention.num_heads, width // attention.num_heads)
            return norm(per_head).reshape(b, n, width)

        def record(module, inputs, output) -> None:
            q, k, v = output.chunk(3, dim=-1)
            self._qkv["q", index] = normed(q, getattr(attention, "q_norm", None))
            self._qkv["k", index] = normed(k, getattr(attention, "k_norm", None))
            self._qkv["v", index] = v

        return record

    def take(self, attention_mask: torch.Tensor | None = None) -> TransformerInternals:
        count = len(self.layout.layers)
        missing = [i for i in range(count + 1) if i not in self._hidden]
        if missing:
            raise RuntimeError(f"no complete forward recorded since the last take (hidden states {missing} missing)")
        per_role = {role: [self._qkv[role, i] for i in range(1, count + 1)] for role in "qkv"}
        internals = TransformerInternals([self._hidden[i] for i in range(count + 1)], per_role["q"], per_role["k"],
                                         per_role["v"], self.layout.heads, attention_mask)
        self.clear()
        return internals

    def clear(self) -> None:
        self._hidden, self._qkv = {}, {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()
