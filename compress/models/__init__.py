"""Model sources: the built-in zoo, `timm:NAME`, `hf:PATH`, `torchvision:NAME` and `package.module:factory`.

A model is described by a spec (source name, kwargs, input geometry) that is stored next to its
weights, so a checkpoint can be rebuilt anywhere with `weights_only=True` loading.
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
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
    # Text models: the tokenizer's vocabulary and the longest input (0 for images).
    vocab_size: int = 0
    max_length: int = 0
    # A pruned model: the shapes pruning changed (compress.models.pruned_shapes.structure_of), applied after building.
    pruned: dict[str, Any] | None = None

    @property
    def takes_tokens(self) -> bool:
        """A model of token ids (a vocabulary), not of pixels."""
        return self.vocab_size > 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return data if self.pruned is not None else {k: v for k, v in data.items() if k != "pruned"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        return cls(**data)


def zoo_names() -> list[str]:
    from compress.models.zoo import ZOO

    return sorted(ZOO)


def check_model_name(name: str) -> str | None:
    """None when `name` can be built here, else a one-line reason."""
    from compress.models import external as sources

    if name.startswith("timm:"):
        return sources.check_timm(name.split(":", 1)[1])
    if name.startswith("hf-config:"):
        from compress.models.text_models import check_hf_config

        return check_hf_config(name.split(":", 1)[1])
    if name.startswith("hf:"):
        return sources.check_hf(name.split(":", 1)[1])
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
        return (f"unknown model '{name}'; built-in: {', '.join(zoo_names())}, or timm:NAME, hf:FOLDER, "
                "hf-config:bert, torchvision:NAME, or module:factory")
    return None


# What the toolchain passes to every model itself, from the data: never part of `kwargs`.
GEOMETRY = ("in_channels", "num_classes", "input_size")
GEOMETRY_NOTE = "set from the data (the toolchain passes in_channels, num_classes and input_size itself); remove it"


def _call_with_supported(factory, kwargs: dict[str, Any], geometry: dict[str, Any]):
    """Pass in_channels/num_classes/input_size only if the factory accepts them."""
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    extra = {k: v for k, v in geometry.items() if takes_any or k in params}
    return factory(**extra, **kwargs)


def _kwargs_error(name: str, error: TypeError) -> UsageError | None:
    """A TypeError about a keyword argument as one line, or None when it is about something else."""
    text = str(error).splitlines()[0] if str(error) else ""
    if "keyword argument" not in text:
        return None
    return UsageError(f"model '{name}': bad kwargs: {text}")


def build_model(spec: ModelSpec):
    problem = check_model_name(spec.name)
    if problem:
        raise UsageError(problem)
    given = [k for k in GEOMETRY if k in spec.kwargs]
    if given:
        raise UsageError(f"model '{spec.name}': kwargs.{given[0]}: {GEOMETRY_NOTE}")
    geometry = {"in_channels": spec.in_channels, "num_classes": spec.num_classes, "input_size": spec.input_size}
    try:
        model = _build(spec, geometry)
    except TypeError as error:
        usage = _kwargs_error(spec.name, error)
        if usage is None:
            raise
        raise usage from None
    if spec.pruned is None:
        return model
    from compress.models.pruned_shapes import apply_structure

    return apply_structure(model, spec.pruned)


def _build(spec: ModelSpec, geometry: dict[str, Any]):
    from compress.models import external as sources

    if spec.takes_tokens:
        from compress.models import text_models

        if spec.name.startswith("hf-config:"):
            return text_models.build_hf_config(spec.name.split(":", 1)[1], spec.vocab_size, spec.max_length,
                                               spec.num_classes, spec.kwargs)
        if spec.name.startswith("hf:"):
            return text_models.build_hf_text(spec.name.split(":", 1)[1], spec.num_classes, spec.kwargs)
        if ":" not in spec.name or spec.name.startswith(("timm:", "torchvision:")):
            raise UsageError(f"model '{spec.name}' classifies images; for texts use hf-config:bert, hf:FOLDER "
                             "or a module:factory taking input_ids")
    elif spec.name.startswith("hf-config:"):
        raise UsageError(f"model '{spec.name}' classifies texts: use data.source text")
    if spec.name.startswith("timm:"):
        return sources.build_timm(spec.name.split(":", 1)[1], spec.in_channels, spec.num_classes, spec.kwargs)
    if spec.name.startswith("hf:"):
        return sources.build_hf(spec.name.split(":", 1)[1], spec.in_channels, spec.num_classes, spec.kwargs)
    if spec.name.startswith("torchvision:"):
        import torchvision.models as tvm

        if spec.in_channels != 3:
            raise UsageError(f"{spec.name} takes 3-channel images, the data has {spec.in_channels}: set "
                             "data.grayscale: false, or use a built-in model or a module:factory that takes in_channels")
        return tvm.get_model(spec.name.split(":", 1)[1], weights=None, num_classes=spec.num_classes, **spec.kwargs)
    if ":" in spec.name:
        module_name, _, attr = spec.name.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
        return _call_with_supported(factory, spec.kwargs, geometry)
    from compress.models.zoo import ZOO

    return ZOO[spec.name](**geometry, **spec.kwargs)


def _factory(name: str):
    """The callable `name` builds with (zoo entry, torchvision builder, timm entrypoint, user factory)."""
    if name.startswith("timm:"):
        import timm

        return timm.model_entrypoint(name.split(":", 1)[1])
    if name.startswith(("hf:", "hf-config:")):
        raise ValueError("a Hugging Face config takes its own keys")  # kwargs_problem: cannot be told
    if name.startswith("torchvision:"):
        import torchvision.models as tvm

        return tvm.get_model_builder(name.split(":", 1)[1])
    if ":" in name:
        module_name, _, attr = name.partition(":")
        return getattr(importlib.import_module(module_name), attr)
    from compress.models.zoo import ZOO

    return ZOO[name]


def _keyword_params(function, with_default_only: bool = False) -> tuple[list[str], bool]:
    """(names that can be passed by keyword, whether it also takes **kwargs)."""
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return [], True
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
             and not (with_default_only and p.default is p.empty)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def accepted_kwargs(name: str) -> tuple[list[str], bool]:
    """The kwargs model `name` takes (the geometry aside) and whether it may take others (**kwargs).

    A torchvision builder hands its **kwargs to its model class, whose optional arguments are the
    ones to name; the builder may take more (vit's image_size), so only building it can tell.
    """
    factory = _factory(name)
    names, open_ended = _keyword_params(factory)
    if name.startswith("timm:"):
        names = [n for n in names if n != "pretrained"]
    if name.startswith("torchvision:"):
        import typing

        names = [n for n in names if n not in ("weights", "progress")]
        model_class = typing.get_type_hints(factory).get("return")
        if isinstance(model_class, type):
            names += _keyword_params(model_class.__init__, with_default_only=True)[0]
    return [n for n in dict.fromkeys(names) if n not in GEOMETRY], open_ended


def kwargs_problem(name: str, kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """(the kwarg at fault, why) when model `name` cannot take `kwargs`; None when it can or cannot be told.

    For `compress validate`: a signature says most of it; a factory with **kwargs is built on torch's
    meta device (no weights in memory) to see whether it refuses one.
    """
    given = [k for k in GEOMETRY if k in kwargs]
    if given:
        return given[0], GEOMETRY_NOTE
    try:
        names, open_ended = accepted_kwargs(name)
    except Exception:
        return None
    takes = f"it takes {', '.join(names)}" if names else "it takes no kwargs"
    unknown = [k for k in kwargs if k not in names]
    if unknown and not open_ended:
        return unknown[0], f"{name} does not take '{unknown[0]}'; {takes}"
    if not open_ended or not kwargs:
        return None
    import torch

    try:
        with torch.device("meta"):
            build_model(ModelSpec(name, 3, 10, 32, dict(kwargs)))
    except UsageError as error:
        quoted = re.findall(r"argument '(\w+)'", str(error))
        if "keyword argument" in str(error) and quoted and quoted[0] in kwargs:
            return quoted[0], f"{name} does not take '{quoted[0]}'; {takes}"
    except Exception:
        return None
    return None


def model_outline(spec: ModelSpec):
    """The model a config names, built on torch's meta device (no weights in memory, no data read).

    For `compress validate` to check the module paths a config names (feature losses, NNCF's
    ignored scope) before anything runs. The geometry of `spec` is a placeholder its task gives
    (compress.tasks: Task.outline_spec): module paths do not depend on it. None when the model cannot
    be built that way; the stage checks again on the real model when it starts.
    """
    import torch

    try:
        with torch.device("meta"):
            return build_model(spec)
    except Exception:
        return None


def save_checkpoint(path: str | Path, model, spec: ModelSpec, extra: dict[str, Any] | None = None) -> None:
    """state_dict + spec: plain tensors and plain types, loadable with weights_only=True."""
    import torch

    from compress.core.fileio import atomic_path

    payload = {"state_dict": model.state_dict(), "model": spec.to_dict(), **(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


class CheckpointError(UsageError):
    """A checkpoint that cannot be used, with the reason alone (`reason`) for callers that name the field."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def load_state_dict(path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Returns (state_dict, spec dict or None). Accepts our checkpoints, bare state_dicts and .safetensors."""
    import torch

    if Path(path).suffix == ".safetensors":
        from compress.models.external import read_safetensors

        try:
            return read_safetensors(Path(path)), None
        except ValueError as error:
            raise CheckpointError(path, str(error)) from None
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it may not read: the reason below says more
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign pickles
        raise CheckpointError(path, unreadable_reason(Path(path), error)) from None
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload, spec = payload["state_dict"], payload.get("model")
    else:
        spec = None
    if not isinstance(payload, dict):
        raise CheckpointError(path, f"not a state_dict or checkpoint: it holds a {type(payload).__name__}")
    return payload, spec if isinstance(spec, dict) else None


def _pickle_streams(path: Path):
    """The pickles a checkpoint file holds: each `*.pkl` record of a torch zip archive, or the file itself."""
    import io
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith(".pkl"):
                    yield io.BytesIO(archive.read(name))
        return
    with open(path, "rb") as fh:
        yield fh


DOTTED_NAME = re.compile(r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$")


def _globals_called(stream) -> list[str]:
    """`module.name` of every global a pickle would import and call, read without unpickling anything.

    Several pickles may follow each other (torch's legacy format); reading stops at the first byte
    that is not a pickle opcode.
    """
    import pickletools

    found: list[str] = []
    for _pickle in range(8):
        strings: list[str] = []
        memo: dict[int, Any] = {}
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name == "GLOBAL":
                    found.append(arg.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str) and ("UNICODE" in opcode.name or "STRING" in opcode.name):
                    strings.append(str(arg))
                elif opcode.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif opcode.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                    memo[int(arg)] = strings[-1]
                elif opcode.name in ("BINGET", "LONG_BINGET", "GET") and isinstance(memo.get(int(arg)), str):
                    strings.append(memo[int(arg)])
        except Exception:  # not (or no longer) a pickle
            break
    return [name for name in found if DOTTED_NAME.match(name)]


def foreign_global(path: Path) -> str | None:
    """The first global in the checkpoint's pickles that torch's safe loader does not allow, if any."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except (ImportError, AttributeError):  # a private helper: fall back to torch's own modules
        allowed = set()
    plain = {"torch", "torch._utils", "torch._tensor", "collections"}
    try:
        for stream in _pickle_streams(path):
            for name in _globals_called(stream):
                if name not in allowed and name.rpartition(".")[0] not in plain:
                    return name
    except Exception:  # a damaged archive: the caller says so
        return None
    return None


def unreadable_reason(path: Path, error: Exception) -> str:
    """Why torch's safe loader refused `path`, in our words: torch's own text advises
    `weights_only=False`, which for a file that asks to run code is the one thing not to do."""
    if path.stat().st_size == 0:
        return "not a checkpoint: the file is empty"
    call = foreign_global(path)
    if call:
        hint = "; it holds a pickled object, not a state_dict: save model.state_dict()" \
            if call.rpartition(".")[2][:1].isupper() else ""
        return f"refused: the file asks to call {call}, which a weights_only load never runs{hint}"
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"PK\x03\x04":
        return "not a checkpoint: a damaged or truncated torch archive"
    detail = str(error).split("WeightsUnpickler error:")[-1].strip().splitlines()
    detail = [line for line in detail if line.strip() and "weights_only" not in line and "operand" not in line]
    return "not a checkpoint (neither a torch archive nor a pickle of tensors)" + (f": {detail[0]}" if detail else "")


def weights_problem(model, state: dict[str, Any], shown: int = 3) -> str | None:
    """Which keys and shapes of `state` do not fit `model` (the first few of each); None when they all do."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in own if k in state
              and hasattr(own[k], "shape") and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]

    def part(what: str, items: list[str]) -> str:
        more = f", ... ({len(items) - shown} more)" if len(items) > shown else ""
        return f"{what} ({len(items)}): {', '.join(items[:shown])}{more}"

    parts = [part(w, i) for w, i in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches, checkpoint vs model", shapes)) if i]
    return "; ".join(parts) or None


def load_model(path: str | Path, spec: ModelSpec | None = None):
    """Rebuild a model from a checkpoint; `spec` is needed for bare state_dicts."""
    state, stored = load_state_dict(path)
    spec = ModelSpec.from_dict(stored) if stored else spec
    if spec is None:
        raise UsageError(f"{path}: the checkpoint has no model spec; name the model in the config")
    model = build_model(spec)
    problem = weights_problem(model, state)
    if problem:
        raise CheckpointError(path, f"weights do not fit model '{spec.name}': {problem}")
    model.load_state_dict(state)
    return model.eval(), spec


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model, input_shape: tuple[int, ...] | None = None, example: dict | None = None) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (torch's flop counter / 2); a text model counts on
    `example` (named token tensors of one row, at the length that matters)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**example) if example is not None else model(torch.zeros(1, *input_shape))
    return int(counter.get_total_flops() // 2)
