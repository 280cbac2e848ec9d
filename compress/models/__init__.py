"""Model sources: the built-in zoo, `torchvision:NAME` and `package.module:factory`.

A model is described by a spec (source name, kwargs, input geometry) that is stored next to its
weights, so a checkpoint can be rebuilt anywhere with `weights_only=True` loading.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compress.core.errors import UsageError


@dataclass
class ModelSpec:
    name: str
    in_channels: int
    num_classes: int
    input_size: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        return cls(**data)


def zoo_names() -> list[str]:
    from compress.models.zoo import ZOO

    return sorted(ZOO)


def check_model_name(name: str) -> str | None:
    """None when `name` can be built here, else a one-line reason."""
    if name.startswith("torchvision:"):
        try:
            import torchvision.models as tvm
        except ImportError:
            return "torchvision is not installed (pip install torchvision)"
        arch = name.split(":", 1)[1]
        if arch not in tvm.list_models():
            return f"unknown torchvision model '{arch}'"
        return None
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            return f"cannot import module '{module_name}': {error}"
        if not callable(getattr(module, attr, None)):
            return f"module '{module_name}' has no callable '{attr}'"
        return None
    if name not in zoo_names():
        return f"unknown model '{name}'; built-in: {', '.join(zoo_names())}, or torchvision:NAME, or module:factory"
    return None


def _call_with_supported(factory, kwargs: dict[str, Any], geometry: dict[str, Any]):
    """Pass in_channels/num_classes/input_size only if the factory accepts them."""
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    extra = {k: v for k, v in geometry.items() if takes_any or k in params}
    return factory(**extra, **kwargs)


def build_model(spec: ModelSpec):
    problem = check_model_name(spec.name)
    if problem:
        raise UsageError(problem)
    geometry = {"in_channels": spec.in_channels, "num_classes": spec.num_classes, "input_size": spec.input_size}
    if spec.name.startswith("torchvision:"):
        import torchvision.models as tvm

        if spec.in_channels != 3:
            raise UsageError(f"{spec.name} expects 3 input channels, the data has {spec.in_channels}")
        return tvm.get_model(spec.name.split(":", 1)[1], weights=None, num_classes=spec.num_classes, **spec.kwargs)
    if ":" in spec.name:
        module_name, _, attr = spec.name.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        return _call_with_supported(factory, spec.kwargs, geometry)
    from compress.models.zoo import ZOO

    try:
        return ZOO[spec.name](**geometry, **spec.kwargs)
    except TypeError as error:
        raise UsageError(f"model '{spec.name}': bad kwargs: {error}") from None


def model_outline(name: str, kwargs: dict[str, Any]):
    """The model a config names, built on torch's meta device (no weights in memory, no data read).

    For `compress validate` to check the module paths a config names (feature losses, NNCF's
    ignored scope) before anything runs. The geometry is a placeholder (3 channels, 10 classes,
    32 px): module paths do not depend on it. None when the model cannot be built that way; the
    stage checks again on the real model when it starts.
    """
    import torch

    try:
        with torch.device("meta"):
            return build_model(ModelSpec(name, 3, 10, 32, dict(kwargs)))
    except Exception:
        return None


def save_checkpoint(path: str | Path, model, spec: ModelSpec, extra: dict[str, Any] | None = None) -> None:
    """state_dict + spec: plain tensors and plain types, loadable with weights_only=True."""
    import torch

    from compress.core.fileio import atomic_path

    payload = {"state_dict": model.state_dict(), "model": spec.to_dict(), **(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_state_dict(path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Returns (state_dict, spec dict or None). Accepts our checkpoints and bare state_dicts."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign pickles
        raise UsageError(f"{path}: cannot load checkpoint with weights_only=True: {str(error).splitlines()[0]}") from None
    if isinstance(payload, dict) and "state_dict" in payload:
        return payload["state_dict"], payload.get("model")
    if isinstance(payload, dict):
        return payload, None
    raise UsageError(f"{path}: not a state_dict or checkpoint")


def load_model(path: str | Path, spec: ModelSpec | None = None):
    """Rebuild a model from a checkpoint; `spec` is needed for bare state_dicts."""
    state, stored = load_state_dict(path)
    spec = ModelSpec.from_dict(stored) if stored else spec
    if spec is None:
        raise UsageError(f"{path}: the checkpoint has no model spec; name the model in the config")
    model = build_model(spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise UsageError(f"{path}: weights do not fit model '{spec.name}': {str(error).splitlines()[0]}") from None
    return model.eval(), spec


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (torch's flop counter / 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *input_shape))
    return int(counter.get_total_flops() // 2)
