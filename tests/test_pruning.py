"""Structured pruning as a library: a model pruned to a MACs or parameter budget, rebuilt from a
weights_only checkpoint, exported to ONNX; and the models the pruner cannot follow, named."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from compress.exporting.torch_to_onnx import export_onnx, onnx_logits
from compress.models import ModelSpec, build_model, count_macs, count_params, load_model, save_checkpoint
from compress.models.pruned_shapes import structure_of
from compress.models.pruning import (Budget, NotPrunable, accumulate_taylor_gradients, classifier_heads, layer_widths,
                                     prune_to)
from compress.core.errors import UsageError


def pruned(spec: ModelSpec, method: str, budget: Budget, keep: tuple[str, ...] = ()):
    """(teacher, pruned copy, example input) for `spec` on random inputs of its geometry."""
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.randn(4, spec.in_channels, spec.input_size, spec.input_size)
    if method == "taylor":
        accumulate_taylor_gradients(model, [(x, torch.tensor([0, 1, 2, 3]))])
    reference = count_macs(model, tuple(x.shape[1:])) if budget.metric == "macs" else count_params(model)
    student, _ = prune_to(model, x[:1], method, budget, reference, [*keep, *classifier_heads(model, x[:1])])
    return model, student, x


@pytest.mark.parametrize("method", ["magnitude", "bn_scale", "taylor"])
def test_every_importance_prunes_the_zoo_cnn_to_the_macs_budget(method):
    spec = ModelSpec("cnn", 1, 10, 8, {"channels": [32, 64, 128]})
    teacher, student, x = pruned(spec, method, Budget("macs", 0.25))
    ratio = count_macs(student, (1, 8, 8)) / count_macs(teacher, (1, 8, 8))
    assert 0.18 < ratio <= 0.25  # at the budget, not far under it
    assert student(x).shape == (4, 10)
    widths = {row["name"]: row for row in layer_widths(teacher, student)}
    assert widths["fc"]["out_after"] == 10 and widths["fc"]["in_after"] < 128  # classes kept, its inputs pruned
    assert widths["layers.0"]["in_after"] == 1  # the image's channels are not the pruner's


@pytest.mark.parametrize("name,size,method", [("resnet8x4", 16, "taylor"), ("resnet32x4", 16, "magnitude")])
def test_residual_resnets_prune_across_their_shortcuts(name, size, method):
    spec = ModelSpec(name, 3, 10, size)
    teacher, student, x = pruned(spec, method, Budget("macs", 0.25))
    assert count_macs(student, (3, size, size)) <= 0.25 * count_macs(teacher, (3, size, size))
    # A block's output and its shortcut are summed: DepGraph removes the same channels from both.
    block = student.layer2[0]
    assert block.conv2.out_channels == block.downsample[0].out_channels == block.bn2.num_features
    assert student(x).shape == (4, 10)


def test_a_parameter_budget_counts_parameters():
    spec = ModelSpec("resnet8x4", 3, 10, 16)
    teacher, student, _ = pruned(spec, "magnitude", Budget("params", 0.4))
    assert 0.3 < count_params(student) / count_params(teacher) <= 0.4


@pytest.mark.parametrize("name", ["torchvision:resnet18", "timm:resnet10t"])
def test_torchvision_and_timm_cnns_prune(name):
    spec = ModelSpec(name, 3, 10, 32)
    teacher, student, x = pruned(spec, "taylor", Budget("macs", 0.3))
    assert count_macs(student, (3, 32, 32)) <= 0.3 * count_macs(teacher, (3, 32, 32))
    assert student(x).shape == (4, 10)


def test_kept_modules_keep_their_channels():
    spec = ModelSpec("cnn", 1, 10, 8, {"channels": [32, 64, 128]})
    _, student, _ = pruned(spec, "magnitude", Budget("macs", 0.5), keep=("layers.4",))
    assert student.layers[4].out_channels == 64


def test_a_pruned_checkpoint_rebuilds_with_weights_only_loading(tmp_path):
    spec = ModelSpec("resnet8x4", 3, 10, 16)
    teacher, student, x = pruned(spec, "taylor", Budget("macs", 0.25))
    path = tmp_path / "student.pt"
    save_checkpoint(path, student, dataclasses.replace(spec, pruned=structure_of(teacher, student)))
    payload = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    assert payload["model"]["pruned"]["conv1"]["shapes"]["weight"][0] < 32
    rebuilt, rebuilt_spec = load_model(path)
    assert rebuilt_spec.pruned == payload["model"]["pruned"]
    with torch.no_grad():
        assert torch.equal(rebuilt(x), student(x))
    with torch.device("meta"):  # what validate builds: shapes without memory
        assert build_model(rebuilt_spec).conv1.out_channels == student.conv1.out_channels


def test_an_unpruned_spec_stays_as_it_was():
    """Checkpoints and cache keys of unpruned models do not change: `pruned` is left out until it is set."""
    spec = ModelSpec("cnn", 1, 10, 8)
    assert "pruned" not in spec.to_dict()
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_a_pruned_model_exports_to_onnx_and_runs_in_onnx_runtime(tmp_path):
    spec = ModelSpec("cnn", 1, 10, 8, {"channels": [32, 64, 128]})
    _, student, x = pruned(spec, "bn_scale", Budget("macs", 0.25))
    export_onnx(student, (1, 8, 8), tmp_path / "student.onnx")
    with torch.no_grad():
        expected = student(x).numpy()
    assert np.abs(onnx_logits(tmp_path / "student.onnx", x.numpy()) - expected).max() < 1e-4


class FixedOffset(nn.Module):
    """Adds a constant of a fixed width: nothing the pruner can see ties it to the conv before it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.arange(16.0).view(1, 16, 1, 1)


class FixedReshape(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], 8, -1).mean(-1)


def odd_model(odd: nn.Module, width: int) -> nn.Module:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.odd, self.fc = nn.Conv2d(1, 16, 3, padding=1), odd, nn.Linear(width, 10)

        def forward(self, x):
            y = self.odd(self.conv(x))
            return self.fc(y.mean((2, 3)) if y.dim() == 4 else y)

    torch.manual_seed(0)
    return Net().eval()


def test_a_model_the_pruner_cannot_follow_is_named_by_its_module_type():
    model, x = odd_model(FixedOffset(), 16), torch.randn(1, 1, 8, 8)
    with pytest.raises(NotPrunable, match=r"cannot follow the model through FixedOffset \(odd\): The size of tensor"):
        prune_to(model, x, "magnitude", Budget("macs", 0.25), count_macs(model, (1, 8, 8)), ["fc"])


def test_layers_the_pruner_must_keep_whole_are_listed_when_the_budget_is_out_of_reach():
    model, x = odd_model(FixedReshape(), 8), torch.randn(1, 1, 8, 8)
    with pytest.raises(UsageError, match=r"macs cannot go below 100% .*cannot take channels from conv \(Conv2d\)"):
        prune_to(model, x, "magnitude", Budget("macs", 0.25), count_macs(model, (1, 8, 8)), ["fc"])


def transformer_heads(model: nn.Module) -> list[int]:
    from compress.models.pruning import attention_modules

    return [getattr(module, count) for module, _, count, _, _ in attention_modules(model)]


@pytest.mark.parametrize("spec, attention, projection, head_width", [
    (ModelSpec("hf-config:bert", 0, 3, 0, {"layers": 2, "hidden": 32, "heads": 4}, 200, 16),
     "model.bert.encoder.layer.0.attention.self", "query", 8),
    (ModelSpec("hf-config:distilbert", 0, 3, 0, {"layers": 2, "hidden": 32, "heads": 4}, 200, 16),
     "model.distilbert.transformer.layer.0.attention", "q_lin", 8),
    (ModelSpec("timm:deit_tiny_patch16_224", 3, 10, 8,
               {"img_size": 8, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 4}),
     "blocks.0.attn", "qkv", 8),
])
def test_transformers_lose_whole_heads_and_mlp_width_and_rebuild_from_weights_only(spec, attention, projection,
                                                                                  head_width, tmp_path):
    """BERT, DistilBERT and ViT/DeiT: heads go whole and MLPs narrow, the hidden width stays; the head counts
    are part of the saved structure, so a weights_only checkpoint rebuilds the same model."""
    from compress.models.pruning import hidden_width_inputs, macs
    from compress.tasks.text_classification import token_example

    torch.manual_seed(0)
    model = build_model(spec).eval()
    example = (token_example(200, 16, 2, 16) if spec.takes_tokens
               else torch.randn(2, 3, 8, 8))
    keep = [*classifier_heads(model, example), *hidden_width_inputs(model)]
    student, _ = prune_to(model, example, "magnitude", Budget("macs", 0.6), macs(model, example), keep)
    assert macs(student, example) <= 0.6 * macs(model, example)
    heads_before, heads_after = transformer_heads(model), transformer_heads(student)
    assert heads_before == [4, 4] and sum(heads_after) < sum(heads_before) and min(heads_after) >= 1
    layer = student.get_submodule(attention)
    assert getattr(layer, projection).in_features == 32  # the residual stream keeps its width
    fused = 3 if projection == "qkv" else 1
    assert getattr(layer, projection).out_features == fused * head_width * transformer_heads(student)[0]
    path = tmp_path / "student.pt"
    save_checkpoint(path, student, dataclasses.replace(spec, pruned=structure_of(model, student)))
    rebuilt, _ = load_model(path)
    assert transformer_heads(rebuilt) == heads_after
    call = (lambda m: m(**example)) if isinstance(example, dict) else (lambda m: m(example))
    with torch.no_grad():
        torch.testing.assert_close(call(rebuilt.eval()), call(student))
