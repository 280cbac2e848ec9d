"""NNCF post-training quantization of a torch model, with the options the pipeline exposes.

The quantized model is the model to fine-tune (QAT) and to export: its FakeQuantize hooks become
QuantizeLinear/DequantizeLinear pairs in ONNX after `nncf.strip`. For TensorRT every quantizer is
symmetric and signed (int8, zero point 0): NNCF's hardware configs refuse a forced signedness for
activations, so the activation quantizers are switched to signed after calibration (their scale
already covers the calibrated range; a post-ReLU activation loses one bit of resolution, which is
exactly what TensorRT's int8 does too). BatchNorm is folded into the convolutions first (see fold.py).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from compress.core.errors import UsageError
from compress.core.fileio import atomic_path
from compress.models import ModelSpec, build_model
from compress.quantize.fold import fold_batchnorm
from compress.quantize.kernels import use_reference_functions

TARGETS = ("cpu", "tensorrt")
PRESETS = ("performance", "mixed")


class NotQuantizable(UsageError):
    """NNCF cannot quantize this model (an op it cannot trace, or nothing it knows how to quantize)."""


def missing_modules(model: nn.Module, names: Iterable[str]) -> list[str]:
    """The names in `names` that are not module paths of `model` (as in `model.named_modules()`)."""
    known = {name for name, _ in model.named_modules() if name}
    return [name for name in names if name not in known]


def module_patterns(names: Iterable[str]) -> list[str]:
    """NNCF names a traced op `module/path/op/call` (dots become slashes): one regex per module."""
    return [f"^{re.escape(name.replace('.', '/'))}/" for name in names]


# The ops NNCF quantizes the weights of: the layers accuracy control can return to float.
WEIGHTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                   nn.Linear)


def quantizable_layers(model: nn.Module, ignored: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(module name, type) of each conv/linear layer of `model`, in model order, outside `ignored` scopes."""
    ignored = list(ignored)
    return [(name, type(module).__name__) for name, module in model.named_modules()
            if isinstance(module, WEIGHTED_LAYERS) and not any(name == s or name.startswith(f"{s}.") for s in ignored)]


def float_reference(model: nn.Module) -> nn.Module:
    """The float model as quantize_model sees it (BN folded): what a quantized candidate is compared with."""
    model = copy.deepcopy(model).eval()
    fold_batchnorm(model)
    return model


def quantizers(model: nn.Module) -> dict[str, nn.Module]:
    from nncf.torch.quantization.layers import BaseQuantizer

    return {name: module for name, module in model.named_modules() if isinstance(module, BaseQuantizer)}


def weight_quantizers(model: nn.Module) -> list[str]:
    """NNCF hooks a weight quantizer before the op that takes the weight (`pre_hooks.<op>__<port>`)."""
    return [name for name in quantizers(model) if ".pre_hooks." in f".{name}"]


def force_signed(model: nn.Module) -> int:
    """Make every symmetric quantizer signed (int8, zero point 0); returns how many changed."""
    from nncf.torch.quantization.layers import SymmetricQuantizer

    changed = 0
    for module in quantizers(model).values():
        if isinstance(module, SymmetricQuantizer) and not module.signed:
            module.signed = True
            changed += 1
    return changed


def batches(x: np.ndarray, batch_size: int) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]


def quantize_model(model: nn.Module, calibration: np.ndarray, *, target: str = "cpu", preset: str | None = None,
                   ignored_scope: list[str] | None = None, bias_correction: bool = False,
                   batch_size: int = 32) -> nn.Module:
    """NNCF PTQ on a BN-folded copy of `model`: int8 fake quantizers calibrated on `calibration` (N, C, H, W).

    Bias correction is off by default: on small CNNs on digits NNCF's fast bias correction cost 6
    top-1 points that plain min-max calibration does not lose.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    if target not in TARGETS:
        raise UsageError(f"unknown quantization target '{target}'; known: {', '.join(TARGETS)}")
    use_reference_functions()  # never NNCF's C++ build: see kernels.py
    missing = missing_modules(model, ignored_scope or [])
    if missing:
        raise UsageError(f"no module '{missing[0]}' in the model")
    if target == "tensorrt":
        preset = "performance"  # symmetric activations; signedness is forced below
    scope = nncf.IgnoredScope(patterns=module_patterns(ignored_scope or []), validate=False)
    model = float_reference(model)
    calibration_batches = batches(calibration, batch_size)
    try:
        with silent_progress():
            quantized = nncf.quantize(
                model, nncf.Dataset(calibration_batches), subset_size=len(calibration_batches),
                preset=nncf.QuantizationPreset(preset) if preset else None,
                target_device=nncf.TargetDevice.CPU if target == "cpu" else nncf.TargetDevice.ANY,
                ignored_scope=scope,
                advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=not bias_correction),
            )
    except Exception as error:  # NNCF raises many types for models it cannot trace or quantize
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise NotQuantizable(f"NNCF cannot quantize this model: {type(error).__name__}: {first}") from None
    if not weight_quantizers(quantized):
        raise NotQuantizable("NNCF found no operation with weights it can quantize (conv, linear, matmul) in this model")
    if target == "tensorrt":
        force_signed(quantized)
    return quantized


def strip(quantized: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy whose quantizers export as QuantizeLinear/DequantizeLinear (needs torchao)."""
    import nncf

    stripped = nncf.strip(quantized, do_copy=True, example_input=example).eval()
    strip_shared_quantizers(stripped)
    return stripped


def strip_shared_quantizers(model: nn.Module) -> int:
    """Replace the NNCF quantizers `nncf.strip` left behind; returns how many.

    nncf.strip converts each quantizer module once, but one module can sit at several hook points
    (the inputs of a Concat share one scale): at the others it stays an NNCF quantizer, which exports
    as OpenVINO's FakeQuantize op, one that ONNX Runtime and TensorRT cannot load.
    """
    from nncf.torch.quantization.layers import BaseQuantizer
    from nncf.torch.quantization.strip import convert_to_torch_fakequantizer

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, BaseQuantizer):
                parent._modules[name] = convert_to_torch_fakequantizer(child)
                replaced += 1
    return replaced


def save_quantized(path: str | Path, quantized: nn.Module, spec: ModelSpec, extra: dict[str, Any] | None = None) -> None:
    """state_dict + NNCF config (as JSON text) + model spec: loadable with weights_only=True."""
    import nncf

    config = json.dumps(nncf.torch.get_config(quantized), default=_plain)
    payload = {"state_dict": quantized.state_dict(), "model": spec.to_dict(), "nncf_config": config, **(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_quantized(path: str | Path) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild the fake-quantized model saved by `save_quantized`; returns (model, spec, payload)."""
    import nncf

    use_reference_functions()  # never NNCF's C++ build: see kernels.py
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "nncf_config" not in payload:
        raise UsageError(f"{path}: not a quantized checkpoint (no nncf_config)")
    spec = ModelSpec.from_dict(payload["model"])
    model = build_model(spec).eval()
    fold_batchnorm(model)  # the same structure quantize_model quantized
    quantized = nncf.torch.load_from_config(model, _restore(json.loads(payload["nncf_config"])))
    quantized.load_state_dict(payload["state_dict"])
    return quantized.eval(), spec, payload


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value.value) if hasattr(value, "value") else str(value)


def _restore(config: dict[str, Any]) -> dict[str, Any]:
    """Turn the JSON config back into what NNCF wrote: enum modes and tuple shapes."""
    from nncf.common.quantization.structs import QuantizationScheme

    for command in config.get("compression_state", []):
        module_config = command.get("module_config", {})
        if "mode" in module_config:
            module_config["mode"] = QuantizationScheme(module_config["mode"])
        if isinstance(module_config.get("scale_shape"), list):
            module_config["scale_shape"] = tuple(module_config["scale_shape"])
    return config


def silent_progress():
    """NNCF draws rich progress bars on stdout; the stages log their own progress instead."""
    return contextlib.redirect_stdout(io.StringIO())


def quiet_nncf() -> None:
    """NNCF logs progress bars and INFO lines; the pipeline prints its own progress."""
    import nncf  # noqa: F401  (its import configures the logger; set the level after it)

    logging.getLogger("nncf").setLevel(logging.WARNING)
