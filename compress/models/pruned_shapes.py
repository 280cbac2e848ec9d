"""The shapes structured pruning changed, as plain data, and a freshly built model resized to them.

A pruned model is its unpruned architecture with narrower tensors (and the widths, groups or head
counts its modules keep as attributes). `structure_of` records just those differences, plain ints
and lists that a `weights_only=True` checkpoint holds; `apply_structure` puts them back into a
model built from the same spec, before its weights are loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.core.errors import UsageError


def _plain_attributes(module: nn.Module) -> dict[str, Any]:
    """A module's int and int-tuple settings (widths, groups, heads): what pruning changes besides tensors."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and not isinstance(v, bool) and (
        isinstance(v, int) or (isinstance(v, tuple) and all(isinstance(n, int) for n in v)))}


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**{k: v for k, v in module._parameters.items() if v is not None},
            **{k: v for k, v in module._buffers.items() if v is not None}}


def structure_of(original: nn.Module, pruned: nn.Module) -> dict[str, dict[str, Any]]:
    """{module name: {"attrs": {name: value}, "shapes": {tensor: [dims]}}} for every module pruning changed."""
    structure = {}
    for name, module in pruned.named_modules():
        before = original.get_submodule(name)
        old_attrs, old_tensors = _plain_attributes(before), _tensors(before)
        attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in _plain_attributes(module).items()
                 if old_attrs.get(k) != v}
        shapes = {k: list(t.shape) for k, t in _tensors(module).items()
                  if k in old_tensors and tuple(old_tensors[k].shape) != tuple(t.shape)}
        if attrs or shapes:
            structure[name] = {"attrs": attrs, "shapes": shapes}
    return structure


def apply_structure(model: nn.Module, structure: dict[str, dict[str, Any]]) -> nn.Module:
    """Resize a freshly built unpruned `model` to a recorded structure (weights are loaded after)."""
    for name, change in structure.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise UsageError(f"the pruned structure names module '{name}', which the model does not have") from None
        for key, value in change.get("attrs", {}).items():
            setattr(module, key, tuple(value) if isinstance(getattr(module, key, None), tuple) else value)
        for key, shape in change.get("shapes", {}).items():
            old = getattr(module, key)
            new = old.detach()[tuple(slice(0, n) for n in shape)].clone()  # the leading channels: any valid start
            if key in module._parameters:
                module._parameters[key] = nn.Parameter(new, requires_grad=old.requires_grad)
            else:
                module._buffers[key] = new
    return model
