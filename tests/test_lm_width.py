"""Width pruning of causal LMs (Minitron): the pruned model computes exactly what the teacher computes with the
dropped heads and channels silenced, keeps the most active ones, keeps whole KV groups, saves and loads as an
ordinary model, and refuses widths it cannot reach with the reason."""

from __future__ import annotations

import copy

import pytest
import torch

from compress.core.errors import UsageError
from compress.tasks.causal_lm.models import build_lm, decoder_layers, load_lm
from compress.tasks.causal_lm.width import check_width, prune_width, sizes, width_importance

LLAMA = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 96}


def llama(seed: int = 0, **changes):
    torch.manual_seed(seed)
    return build_lm("hf-config:llama", {**LLAMA, **changes}, 300, 64).eval()


def batch(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 300, (3, 20), generator=torch.Generator().manual_seed(seed))


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def silenced(model, kept_channels: list[torch.Tensor], kept_heads: list[torch.Tensor] | None, head_dim: int):
    """The unpruned model with every dropped MLP channel and attention head's contribution zeroed."""
    reference = copy.deepcopy(model)
    for number, layer in enumerate(decoder_layers(reference)):
        projection = layer.mlp.down_proj if hasattr(layer.mlp, "down_proj") else None
        if projection is not None:
            mask = torch.zeros(projection.weight.shape[1])
            mask[kept_channels[number]] = 1
            projection.weight.data *= mask
        else:  # GPT-2: c_proj's weight is [intermediate, hidden]
            mask = torch.zeros(layer.mlp.c_proj.weight.shape[0])
            mask[kept_channels[number]] = 1
            layer.mlp.c_proj.weight.data *= mask[:, None]
        if kept_heads is not None:
            heads = torch.zeros(layer.self_attn.o_proj.weight.shape[1] // head_dim)
            heads[kept_heads[number]] = 1
            layer.self_attn.o_proj.weight.data *= heads.repeat_interleave(head_dim)
    return reference


def test_a_width_pruned_llama_computes_the_teacher_with_the_dropped_parts_silenced():
    model, ids = llama(), batch()
    importance = width_importance(model, ids)
    pruned = prune_width(model, importance, heads=2, intermediate=48)
    assert sizes(pruned) == {"heads": 2, "kv_heads": 1, "head_dim": 16, "intermediate": 48, "hidden": 64}
    channels = [torch.topk(c, 48).indices for c in importance.channels]
    groups = [torch.topk(h.reshape(2, 2).sum(-1), 1).indices for h in importance.heads]
    heads = [torch.cat([g * 2, g * 2 + 1]) for g in groups]  # both query heads of the kept KV group
    expected = logits(silenced(model, channels, heads, 16), ids)
    assert torch.allclose(logits(pruned, ids), expected, atol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_the_most_active_heads_and_channels_are_kept():
    model, ids = llama(), batch()
    layer = decoder_layers(model)[1]
    with torch.no_grad():
        layer.self_attn.v_proj.weight[16:32] *= 50   # KV group 1 (query heads 2, 3) speaks loudest
        layer.mlp.up_proj.weight[7] *= 50            # channel 7 likewise
    importance = width_importance(model, ids)
    assert int(importance.heads[1].argmax()) in (2, 3)
    assert int(importance.channels[1].argmax()) == 7
    pruned = prune_width(model, importance, heads=2, intermediate=8)
    kept_v = decoder_layers(pruned)[1].self_attn.v_proj.weight
    assert torch.equal(kept_v, layer.self_attn.v_proj.weight[16:32])
    assert any(torch.equal(row, layer.mlp.up_proj.weight[7]) for row in decoder_layers(pruned)[1].mlp.up_proj.weight)


def test_a_pruned_model_saves_and_loads_as_an_ordinary_model(tmp_path):
    model, ids = llama(), batch()
    pruned = prune_width(model, width_importance(model, ids), heads=2, intermediate=40)
    pruned.save_pretrained(tmp_path)
    again = load_lm(tmp_path)
    assert again.config.head_dim == 16 and again.config.num_attention_heads == 2
    assert torch.equal(logits(again, ids), logits(pruned, ids))


def test_hidden_pruning_keeps_the_loudest_residual_channels_everywhere_they_are_read_or_written(tmp_path):
    model, ids = llama(), batch()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 5] *= 40  # channel 5 of the residual stream is loudest
    importance = width_importance(model, ids)
    assert int(importance.hidden.argmax()) == 5 and importance.hidden.shape == (64,)
    pruned = prune_width(model, importance, hidden=40)
    keep = torch.sort(torch.topk(importance.hidden, 40).indices).values
    assert sizes(pruned)["hidden"] == 40 and pruned.config.head_dim == 16
    assert torch.equal(pruned.model.embed_tokens.weight, model.model.embed_tokens.weight[:, keep])
    assert torch.equal(pruned.lm_head.weight, model.lm_head.weight[:, keep])
    first, original = decoder_layers(pruned)[0], decoder_layers(model)[0]
    assert torch.equal(first.self_attn.q_proj.weight, original.self_attn.q_proj.weight[:, keep])
    assert torch.equal(first.mlp.down_proj.weight, original.mlp.down_proj.weight[keep])
    assert torch.equal(first.input_layernorm.weight, original.input_layernorm.weight[keep])
    pruned.save_pretrained(tmp_path)
    assert torch.equal(logits(load_lm(tmp_path), ids), logits(pruned, ids))
    assert logits(pruned, ids).shape == (3, 20, 300)


def test_tied_embeddings_stay_tied_when_the_hidden_size_shrinks():
    torch.manual_seed(0)
    model = build_lm("hf-config:llama", LLAMA, 300, 64)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    pruned = prune_width(model.eval(), width_importance(model, batch()), hidden=32)
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight
    assert pruned.lm_head.weight.shape == (300, 32)


def test_gpt2_prunes_its_mlp_channels_exactly(tmp_path):
    torch.manual_seed(0)
    model, ids = build_lm("hf-config:gpt2", {"layers": 2, "hidden": 64, "heads": 4}, 300, 64).eval(), batch()
    importance = width_importance(model, ids)
    assert importance.heads is None
    pruned = prune_width(model, importance, intermediate=100)
    channels = [torch.topk(c, 100).indices for c in importance.channels]
    assert torch.allclose(logits(pruned, ids), logits(silenced(model, channels, None, 16), ids), atol=1e-5)
    pruned.save_pretrained(tmp_path)
    assert load_lm(tmp_path).config.n_inner == 100


@pytest.mark.parametrize("heads, intermediate, field, says", [
    (3, None, "heads", "groups of 2, kept or dropped whole: heads must be a multiple of 2"),
    (4, None, "heads", "not fewer than the teacher's 4"),
    (None, 96, "intermediate", "not fewer than the teacher's 96"),
])
def test_widths_a_teacher_cannot_reach_are_refused_with_the_reason(heads, intermediate, field, says):
    model = llama()
    found = check_width(model, heads, intermediate)
    assert found[0] == field and says in found[1]
    with pytest.raises(UsageError, match=field):
        prune_width(model, width_importance(model, batch()), heads, intermediate)


def test_gpt2_heads_are_refused_naming_what_to_prune_instead():
    torch.manual_seed(0)
    model = build_lm("hf-config:gpt2", {"layers": 2, "hidden": 64, "heads": 4}, 300, 64)
    field, why = check_width(model, 2, None)
    assert field == "heads" and "prune its intermediate or layers" in why
    field, why = check_width(model, None, None, 32)
    assert field == "hidden" and "prune its intermediate or layers" in why
    assert check_width(llama(), None, None, 64)[0] == "hidden"
