"""Intermediate features by module path, through forward hooks, so no model is rewritten.

`FeatureTaps(model, ["layers.3"])` records the output of `model.get_submodule("layers.3")` at every
forward; a path that does not exist is reported with the modules that do.
"""

from __future__ import annotations

import torch
from torch import nn


def module_paths(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def describe_paths(model: nn.Module, limit: int = 40) -> str:
    names = module_paths(model)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def missing_path(model: nn.Module, path: str) -> str | None:
    """None when `path` names a module of `model`, else a message listing the modules that exist."""
    try:
        model.get_submodule(path)
        return None
    except AttributeError:
        return f"no module '{path}'; modules: {describe_paths(model)}"


class FeatureTaps:
    """Keeps the latest output of each named module; `clear()` after use frees the tensors."""

    def __init__(self, model: nn.Module, paths: list[str]):
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        for path in dict.fromkeys(paths):
            module = model.get_submodule(path)
            self._handles.append(module.register_forward_hook(self._recorder(path)))

    def _recorder(self, path: str):
        def record(module: nn.Module, inputs, output) -> None:
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            # Not copied: an in-place op right after (ReLU(inplace=True)) shows in student and teacher alike.
            self.features[path] = tensor

        return record

    def take(self) -> dict[str, torch.Tensor]:
        features, self.features = self.features, {}
        return features

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
