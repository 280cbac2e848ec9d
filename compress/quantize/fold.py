"""Fold eval-mode BatchNorm into the convolution before it, keeping the model's class and module names.

A Q/DQ graph with BatchNormalization between a quantized Conv and the next QuantizeLinear keeps ONNX
Runtime from fusing the int8 convolution (and TensorRT folds it anyway), so the student is folded
before NNCF inserts its quantizers. Conv -> BN pairs are found by tracing the model with torch.fx;
models that cannot be traced are left as they are.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, bn name) where the BN reads only that conv's output and nothing else reads it."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:
        return []
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), NORMS):
            continue
        source = node.args[0] if node.args else None
        if (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and isinstance(modules.get(source.target), CONVS) and len(source.users) == 1):
            pairs.append((source.target, node.target))
    names = [bn for _, bn in pairs]
    return [pair for pair in pairs if names.count(pair[1]) == 1]  # a BN module called twice stays


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold in place (model must be in eval mode); returns the number of folded BatchNorms."""
    model.eval()
    pairs = conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        fused = fuse_conv_bn_eval(model.get_submodule(conv_name), model.get_submodule(bn_name))
        _set_module(model, conv_name, fused)
        _set_module(model, bn_name, nn.Identity())
    return len(pairs)
