"""Structured channel pruning (torch-pruning's DepGraph) to a MACs or parameter budget, and its record.

DepGraph follows the channels a layer shares with others (residual sums, concatenations, the
batch norms after a conv), so whole channels go from every layer that uses them and the model
stays a plain model of the same classes, which exports and builds like the unpruned one. The
shapes it changed are kept as plain data beside the weights (compress.models.pruned_shapes).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from compress.core.errors import UsageError
from compress.models import count_macs, count_params
from compress.tasks.inputs import call_model, rows

# Attention modules by the projections that hold their heads, and the attribute counting them:
# (projection names, head-count attribute, per-head width attribute, projections fused in one layer).
ATTENTION_LAYOUTS = (
    (("query", "key", "value"), "num_attention_heads", "attention_head_size", 1),  # BERT (transformers)
    (("q_lin", "k_lin", "v_lin"), "n_heads", "attention_head_size", 1),  # DistilBERT
    (("qkv",), "num_heads", "head_dim", 3),  # timm ViT / DeiT
)

METHODS = ("magnitude", "bn_scale", "taylor")
# Module types whose output width is reported per layer (what the pruner takes channels from).
LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Halving steps of the search for the per-layer ratio that meets a budget (2^-12 of the width range).
SEARCH_STEPS = 12
MAX_RATIO = 0.95


class NotPrunable(UsageError):
    """The pruner cannot follow the model, with the module type where it stopped."""


@dataclass
class Budget:
    """What to bring down (`macs` or `params`) and to what share of the unpruned model."""

    metric: str
    fraction: float


def importance(method: str):
    """torch-pruning's importance criterion for `method` (Taylor needs gradients on the weights first)."""
    import torch_pruning as tp

    if method == "magnitude":
        return tp.importance.MagnitudeImportance(p=2)
    if method == "bn_scale":
        return tp.importance.BNScaleImportance()
    if method == "taylor":
        return tp.importance.TaylorImportance()
    raise ValueError(f"unknown importance '{method}'; known: {', '.join(METHODS)}")


def classifier_heads(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The name of the layer that writes the logits: its outputs are the classes, so it is never pruned."""
    ran: list[tuple[str, tuple]] = []
    hooks = [m.register_forward_hook(lambda m, _, out, name=name: ran.append((name, tuple(getattr(out, "shape", ())))))
             for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
    try:
        with torch.no_grad():
            logits = call_model(model.eval(), example)
    finally:
        for hook in hooks:
            hook.remove()
    heads = [name for name, shape in ran if shape == tuple(logits.shape)]
    return heads[-1:]


def running_module(model: nn.Module, run: Callable[[], Any]) -> tuple[Exception | None, str | None]:
    """(the error `run` raised, 'Type (name)' of the innermost module running then); (None, None) when it ran."""
    stack: list[str] = []

    def leave(*_) -> None:  # a forward hook that returned a value would replace the module's output
        if stack:
            stack.pop()

    hooks = [h for name, m in model.named_modules() if name for h in (
        m.register_forward_pre_hook(lambda m, _, name=name: stack.append(f"{type(m).__name__} ({name})")),
        m.register_forward_hook(leave))]
    try:
        run()
        return None, None
    except Exception as error:
        return error, stack[-1] if stack else handled_module(model, error)
    finally:
        for hook in hooks:
            hook.remove()


class RememberedImportance:
    """A criterion that scores each group once: every copy of one model scores its groups the same, so the
    search for a ratio (a fresh copy per try) need not score them again. `names` maps the copy's modules."""

    def __init__(self, method: str):
        self.criterion, self.names, self.scores = importance(method), {}, {}

    def __call__(self, group) -> torch.Tensor:
        dep = group[0][0]
        key = (self.names.get(dep.target.module), getattr(dep.handler, "__name__", str(dep.handler)), len(group))
        if key not in self.scores:
            self.scores[key] = self.criterion(group)
        return self.scores[key]


def handled_module(model: nn.Module, error: Exception) -> str | None:
    """'Type (name)' of the innermost layer the pruner was handling when `error` rose outside a forward pass
    (a local of its frames: the module, or a graph node or dependency holding it); None when none is."""
    names = {id(m): name for name, m in model.named_modules() if name}
    found = None
    frame = error.__traceback__
    while frame is not None:
        for value in frame.tb_frame.f_locals.values():
            for candidate in (value, getattr(value, "module", None), getattr(getattr(value, "target", None), "module", None)):
                if isinstance(candidate, nn.Module) and id(candidate) in names:
                    found = f"{type(candidate).__name__} ({names[id(candidate)]})"
        frame = frame.tb_next
    return found


def attention_modules(model: nn.Module) -> list[tuple[nn.Module, tuple[str, ...], str, str, int]]:
    """(module, its projections, head-count attribute, head-width attribute, fused projections) of every
    attention module whose heads the pruner can take whole."""
    found = []
    for module in model.modules():
        for projections, count_attr, width_attr, fused in ATTENTION_LAYOUTS:
            if all(isinstance(getattr(module, p, None), nn.Linear) for p in projections) \
                    and isinstance(getattr(module, count_attr, None), int):
                found.append((module, projections, count_attr, width_attr, fused))
    return found


def head_counts(model: nn.Module) -> dict[nn.Module, int]:
    """torch-pruning's `num_heads`: each projection layer of an attention module and its head count."""
    return {getattr(module, p): getattr(module, count) for module, projections, count, _, _ in attention_modules(model)
            for p in projections}


def sync_head_counts(model: nn.Module) -> None:
    """After whole heads went, each attention module's head count (and total width: BERT's all_head_size,
    timm's attn_dim) from its projections' widths."""
    for module, projections, count, width, fused in attention_modules(model):
        out = getattr(module, projections[0]).out_features // fused
        setattr(module, count, out // getattr(module, width))
        for total in ("all_head_size", "attn_dim"):
            if isinstance(getattr(module, total, None), int):
                setattr(module, total, out)


def hidden_width_inputs(model: nn.Module) -> list[str]:
    """The layers a Transformer's hidden width starts at (token and position embeddings, a ViT's patch
    embedding): kept whole, so heads and MLP widths are pruned and the residual stream is not."""
    return [name for name, m in model.named_modules()
            if name and (isinstance(m, nn.Embedding) or type(m).__name__ == "PatchEmbed")]


def _prune_in_place(model: nn.Module, example, criterion, ratio: float, kept: list[nn.Module]) -> None:
    import torch_pruning as tp

    heads = head_counts(model)
    options = {"num_heads": heads, "prune_num_heads": True, "prune_head_dims": False,
               "head_pruning_ratio": ratio} if heads else {}
    with warnings.catch_warnings():  # its notes on parameters it leaves alone
        warnings.simplefilter("ignore")
        tp.pruner.BasePruner(model, example, importance=criterion, pruning_ratio=ratio, ignored_layers=kept,
                             **options).step()
    sync_head_counts(model)


def checked_copy(model: nn.Module, example: torch.Tensor, criterion: RememberedImportance, ratio: float,
                 keep: list[str]) -> nn.Module:
    """A copy of `model` with `ratio` of every prunable layer's channels removed (gradients copied for Taylor);
    a pruner, or a pruned forward, that fails is named by the module type it failed in."""
    pruned = copy.deepcopy(model)
    for source, target in zip(model.parameters(), pruned.parameters()):
        target.grad = None if source.grad is None else source.grad.clone()
    criterion.names = {m: n for n, m in pruned.named_modules()}
    kept = [pruned.get_submodule(name) for name in keep]
    error, where = running_module(pruned, lambda: _prune_in_place(pruned, example, criterion, ratio, kept)) \
        if ratio > 0 else (None, None)
    if error is None:
        with torch.no_grad():
            error, where = running_module(pruned, lambda: call_model(pruned.eval(), example))
    if error is not None:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise NotPrunable(f"the pruner cannot follow the model through {where or type(model).__name__}: {text}") \
            from error
    for param in pruned.parameters():
        param.grad = None
    return pruned.eval()


def positions(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Output positions per weight of every conv and linear layer at batch 1 (pixels, or 1): channel pruning
    leaves them as they are, so MACs = sum(weights x positions) of the layers, without running the model."""
    found: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda m, _, out, name=name: found.__setitem__(
        name, out.numel() // out.shape[0] // (m.out_channels if hasattr(m, "out_channels") else m.out_features)))
        for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
    try:
        with torch.no_grad():
            call_model(model.eval(), rows(example, 0, 1))
    finally:
        for hook in hooks:
            hook.remove()
    return found


def layer_macs(model: nn.Module, at: dict[str, int]) -> int:
    return sum(m.weight.numel() * at[name] for name, m in model.named_modules() if name in at)


def prune_to(model: nn.Module, example: torch.Tensor, method: str, budget: Budget, reference: int,
             keep: Iterable[str] = ()) -> tuple[nn.Module, float]:
    """A pruned copy of `model` at or below `budget.fraction * reference` (MACs or params), and the ratio used;
    the modules named in `keep` are left whole.

    torch-pruning removes a share of every layer's channels; the share that just meets the budget
    is found by halving the interval (the cost falls as the share grows). MACs are those of the
    conv and linear layers, which is what torch's flop counter counts in a CNN.
    """
    keep, criterion = list(keep), RememberedImportance(method)
    at = positions(model, example) if budget.metric == "macs" else {}
    # torch's count over the layers' own: what they leave out (products outside any layer)
    scale = macs(model, example) / max(layer_macs(model, at), 1) if at else 1.0

    def cost(candidate: nn.Module) -> float:
        return layer_macs(candidate, at) * scale if at else count_params(candidate)

    target = budget.fraction * reference
    if cost(model) <= target:
        return checked_copy(model, example, criterion, 0.0, keep), 0.0
    low, high, best, smallest = 0.0, MAX_RATIO, None, None
    for step in range(SEARCH_STEPS + 1):  # the widest share first: near it a layer may be skipped as emptied
        ratio = high if step == 0 else (low + high) / 2
        candidate = checked_copy(model, example, criterion, ratio, keep)
        smallest = candidate if smallest is None or cost(candidate) < cost(smallest) else smallest
        if cost(candidate) <= target:
            best, high = candidate, ratio
        elif step:
            low = ratio
    if best is None:
        raise UsageError(unreachable(model, smallest, budget, cost(smallest) / reference, keep))
    return best, high


def macs(model: nn.Module, example) -> int:
    """MACs at batch 1 of an image model (its example's shape) or a text model (its example's tokens)."""
    if isinstance(example, dict):
        return count_macs(model, example=rows(example, 0, 1))
    return count_macs(model, tuple(example.shape[1:]))


def unreachable(model: nn.Module, smallest: nn.Module, budget: Budget, reached: float, keep: list[str]) -> str:
    """Why no share of channels meets the budget: the layers the pruner found nothing to take from."""
    whole = [f"{row['name']} ({row['type']})" for row in layer_widths(model, smallest)
             if row["out_before"] == row["out_after"] and row["name"] not in keep]
    listed = ", ".join(whole[:6]) + (f", ... ({len(whole) - 6} more)" if len(whole) > 6 else "")
    return (f"{budget.metric} cannot go below {reached:.0%} of the teacher's: the pruner cannot take channels from "
            f"{listed or 'any layer'} (an operation it cannot follow uses them whole), and keeps whole "
            f"{', '.join(keep) or 'nothing else'}")


def accumulate_taylor_gradients(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Sum the gradients of cross-entropy over `batches` on the weights (first-order Taylor importance).

    The model stays in eval mode, so its batch-norm statistics do not move; returns the batch count.
    """
    from compress.data.splits import NO_LABEL

    model.eval().zero_grad(set_to_none=True)
    seen = 0
    for x, labels in batches:
        if (labels != NO_LABEL).any():
            nn.functional.cross_entropy(call_model(model, x), labels, ignore_index=NO_LABEL).backward()
            seen += 1
    return seen


def head_widths(original: nn.Module, pruned: nn.Module) -> list[dict[str, Any]]:
    """Every attention module's head count before and after pruning, in model order ([] for a CNN)."""
    names = {m: n for n, m in original.named_modules()}
    return [{"name": names[module], "heads_before": getattr(module, count),
             "heads_after": getattr(pruned.get_submodule(names[module]), count)}
            for module, _, count, _, _ in attention_modules(original)]


def layer_widths(original: nn.Module, pruned: nn.Module) -> list[dict[str, Any]]:
    """Every conv and linear layer's input and output width before and after pruning, in model order."""
    rows = []
    for name, before in original.named_modules():
        if isinstance(before, LAYER_TYPES):
            after = pruned.get_submodule(name)
            width = (lambda m: (m.in_channels, m.out_channels)) if isinstance(before, nn.modules.conv._ConvNd) \
                else (lambda m: (m.in_features, m.out_features))
            (in_before, out_before), (in_after, out_after) = width(before), width(after)
            rows.append({"name": name, "type": type(before).__name__, "in_before": in_before, "in_after": in_after,
                         "out_before": out_before, "out_after": out_after})
    return rows
