"""Models from other libraries (`timm:NAME`, `hf:PATH`, `torchvision:NAME`) and their weight files.

Nothing is ever downloaded: timm builds with `pretrained=False`, Hugging Face folders are read with
`local_files_only=True`, torchvision with `weights=None`; weights come from local files only
(`.pt` state_dicts read with `weights_only=True`, or `.safetensors`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compress.core.errors import UsageError

HF_WEIGHTS = "model.safetensors"


def check_timm(arch: str) -> str | None:
    """None when timm can build `arch`, else a one-line reason."""
    try:
        import timm
    except ImportError:
        return "timm is not installed (pip install timm)"
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch[:4]}*")[:5] if arch else []
        hint = f"; similar: {', '.join(close)}" if close else ""
        return f"unknown timm model '{arch}'{hint}"
    return None


def check_hf(folder: str) -> str | None:
    """None when `folder` is a Hugging Face model folder this machine can build from, else why not."""
    path = Path(folder)
    if not path.is_dir():
        return f"hf folder not found: {path}"
    if not (path / "config.json").is_file():
        return f"hf folder {path} has no config.json (save the model with save_pretrained)"
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"{path / 'config.json'}: not valid JSON: {error}"
    if not (path / HF_WEIGHTS).is_file():
        return f"hf folder {path} has no {HF_WEIGHTS} (save it with save_pretrained(dir, safe_serialization=True))"
    return None


def hf_weights(name: str) -> Path | None:
    """The weights file an `hf:PATH` model carries with it; None for every other source."""
    return Path(name.split(":", 1)[1]) / HF_WEIGHTS if name.startswith("hf:") else None


def build_timm(arch: str, in_channels: int, num_classes: int, kwargs: dict[str, Any]):
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)


def _logits_module():
    from torch import nn

    class HFLogits(nn.Module):
        """A Hugging Face image classifier whose forward takes the image tensor and returns the logits
        tensor alone, as every stage (distillation, ONNX export) expects of a model."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(pixel_values=x, return_dict=True).logits

    return HFLogits


def build_hf(folder: str, in_channels: int, num_classes: int, kwargs: dict[str, Any]):
    """The architecture config.json describes, with the data's classes and channels, fresh weights."""
    from transformers import AutoConfig, AutoModelForImageClassification

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, num_labels=num_classes, **kwargs)
    except (OSError, ValueError) as error:
        raise UsageError(f"{Path(folder) / 'config.json'}: {str(error).splitlines()[0]}") from None
    if hasattr(config, "num_channels"):
        config.num_channels = in_channels
    config.id2label = {i: str(i) for i in range(num_classes)}
    config.label2id = {str(i): i for i in range(num_classes)}
    return _logits_module()(AutoModelForImageClassification.from_config(config))


def hf_state(folder: str, auto_class: str) -> dict[str, Any]:
    """The weights of an hf: folder under the names the built model uses: transformers renames some keys on
    loading (the file keeps the older names), so the file is read through transformers itself, by the Auto
    class the pipeline's task names."""
    import transformers

    auto = getattr(transformers, auto_class)
    transformers.utils.logging.set_verbosity_error()  # its notes of a head for another class count: the stage says it
    transformers.utils.logging.disable_progress_bar()
    try:
        model = auto.from_pretrained(folder, local_files_only=True)
    except Exception as error:  # transformers raises many types for a damaged folder
        raise ValueError(f"cannot load the weights: {str(error).splitlines()[0] if str(error) else error}") from None
    return model.state_dict()


def adapt_keys(model, state: dict[str, Any]) -> dict[str, Any]:
    """A Hugging Face state_dict (keys as save_pretrained writes them) under our wrapper's `model.` prefix."""
    if type(model).__name__ not in ("HFLogits", "TextLogits") or any(key.startswith("model.") for key in state):
        return state
    return {f"model.{key}": value for key, value in state.items()}


def head_keys(model, state: dict[str, Any]) -> list[str]:
    """The keys of `state` that differ from `model` only in the class count (the classifier head), when they
    are all that differs; [] otherwise (the caller reports the mismatch)."""
    own = model.state_dict()
    if set(own) != set(state):
        return []
    differ = [k for k in own if hasattr(own[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    rows = {int(own[k].shape[0]) for k in differ if own[k].dim() >= 1}
    head = [k for k in differ if own[k].dim() >= 1 and tuple(state[k].shape[1:]) == tuple(own[k].shape[1:])]
    return differ if differ and head == differ and len(rows) == 1 else []


def read_safetensors(path: Path) -> dict[str, Any]:
    """A .safetensors file's tensors; a CheckpointError-worthy reason (ValueError) when it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"not a safetensors file: {str(error).splitlines()[0] if str(error) else 'unreadable'}") \
            from None


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def model_statistics(name: str) -> tuple[list[float], list[float]] | None:
    """The per-channel mean and std a model's weights were trained with, where its source says; else None.

    timm: the architecture's pretrained config; hf: the folder's preprocessor_config.json;
    torchvision: ImageNet's (every torchvision classification weight uses it).
    """
    kind, _, rest = name.partition(":")
    if kind == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(rest)
        return (list(cfg.mean), list(cfg.std)) if cfg is not None and cfg.mean else None
    if kind == "torchvision":
        return IMAGENET_MEAN, IMAGENET_STD
    if kind == "hf":
        path = Path(rest) / "preprocessor_config.json"
        if path.is_file():
            processor = json.loads(path.read_text())
            if "image_mean" in processor and "image_std" in processor:
                return list(processor["image_mean"]), list(processor["image_std"])
    return None

