"""Transformer KD: each loss against its formula worked out by hand, padding never counting, and taps
that read BERT, DistilBERT and timm DeiT/ViT internals (tiny random-weight models, nothing downloaded)."""

import math

import pytest
import timm
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification

from compress.distill.losses import LOSSES, KDBatch
from compress.distill.transformer_losses import check_transformer_loss, scaled_products
from compress.distill.transformer_taps import NotATransformer, TransformerInternals, TransformerTaps, describe_transformer

INTERNAL_LOSSES = ["hidden_cosine", "tinybert_hidden", "tinybert_attention", "minilm", "minilmv2"]


def internals(layers=2, width=4, heads=2, mask=None, batch=1, length=3, seed=0):
    g = torch.Generator().manual_seed(seed)

    def draw():
        return torch.randn(batch, length, width, generator=g)

    return TransformerInternals([draw() for _ in range(layers + 1)], [draw() for _ in range(layers)],
                                [draw() for _ in range(layers)], [draw() for _ in range(layers)], heads,
                                None if mask is None else torch.tensor(mask))


def kd_batch(student, teacher, **extra):
    return KDBatch(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long),
                   student_internals=student, teacher_internals=teacher, **extra)


def value(loss, student, teacher):
    return float(loss(kd_batch(student, teacher)).detach())


# Plain-Python arithmetic, independent of the code under test: rows of one head, dot products, softmax, KL.
def head_rows(x, head, heads):
    d = x.shape[-1] // heads
    return [[float(x[0, i, head * d + c]) for c in range(d)] for i in range(x.shape[1])]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def softmax(scores):
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def mean(values):
    values = list(values)
    return sum(values) / len(values)


def relation_kl_by_hand(teacher, student, heads, real):
    """Mean over heads and real query rows of KL(softmax(t_i t_j / sqrt d) || softmax(s_i s_j / sqrt d)), j real."""
    def rows(a, b, h):
        ra, rb, d = head_rows(a, h, heads), head_rows(b, h, heads), a.shape[-1] // heads
        return [softmax([dot(ra[i], rb[j]) / math.sqrt(d) for j in real]) for i in real]

    return mean(kl(p, q) for h in range(heads) for p, q in zip(rows(*teacher, h), rows(*student, h)))


def test_hidden_cosine_is_one_minus_cosine_of_last_states_over_real_tokens():
    s, t = internals(mask=[[1, 1, 0]]), internals(mask=[[1, 1, 0]], seed=1)
    rows_s, rows_t = head_rows(s.hidden[-1], 0, 1), head_rows(t.hidden[-1], 0, 1)
    expected = mean(1 - dot(a, b) / math.sqrt(dot(a, a) * dot(b, b)) for a, b in zip(rows_s[:2], rows_t[:2]))
    assert value(LOSSES["hidden_cosine"](), s, t) == pytest.approx(expected, rel=1e-5)


def test_tinybert_hidden_maps_layers_uniformly_from_the_embeddings_and_averages_the_squared_error():
    s, t = internals(layers=2, mask=[[1, 1, 0]]), internals(layers=4, mask=[[1, 1, 0]], seed=1)

    def mse(a, b):
        ra, rb = head_rows(a, 0, 1)[:2], head_rows(b, 0, 1)[:2]
        return mean(mean((x - y) ** 2 for x, y in zip(u, w)) for u, w in zip(ra, rb))

    expected = mean(mse(s.hidden[i], t.hidden[j]) for i, j in {0: 0, 1: 2, 2: 4}.items())
    assert value(LOSSES["tinybert_hidden"](), s, t) == pytest.approx(expected, rel=1e-5)
    explicit = LOSSES["tinybert_hidden"](layer_map={"2": "3", 0: 1})  # YAML may give the keys as strings
    assert value(explicit, s, t) == pytest.approx(mean([mse(s.hidden[2], t.hidden[3]), mse(s.hidden[0], t.hidden[1])]),
                                                  rel=1e-5)


def test_tinybert_hidden_projects_a_narrower_student_with_its_learned_matrix():
    s, t = internals(layers=1, width=4), internals(layers=1, width=6, seed=1)
    loss = LOSSES["tinybert_hidden"]()
    loss.setup_widths(4, 6)
    w = loss.projection.weight.tolist()

    def mse_after_projection(h_student, h_teacher):
        projected = [[dot(w[o], row) for o in range(6)] for row in head_rows(h_student, 0, 1)]
        return mean(mean((x - y) ** 2 for x, y in zip(a, b)) for a, b in zip(projected, head_rows(h_teacher, 0, 1)))

    expected = mean(mse_after_projection(s.hidden[i], t.hidden[i]) for i in (0, 1))
    assert value(loss, s, t) == pytest.approx(expected, rel=1e-5)


def test_tinybert_attention_is_the_mse_of_scores_before_softmax_over_real_pairs_and_mapped_layers():
    s, t = internals(layers=2, mask=[[1, 1, 0]]), internals(layers=4, mask=[[1, 1, 0]], seed=1)

    def squared_errors(i, j):
        for h in range(2):
            qs, ks = head_rows(s.queries[i - 1], h, 2), head_rows(s.keys[i - 1], h, 2)
            qt, kt = head_rows(t.queries[j - 1], h, 2), head_rows(t.keys[j - 1], h, 2)
            for a in range(2):
                for b in range(2):
                    yield (dot(qs[a], ks[b]) / math.sqrt(2) - dot(qt[a], kt[b]) / math.sqrt(2)) ** 2

    by_hand = mean([mean(squared_errors(1, 2)), mean(squared_errors(2, 4))])
    assert value(LOSSES["tinybert_attention"](layer_map={"1": 2, 2: "4"}), s, t) == pytest.approx(by_hand, rel=1e-5)
    assert value(LOSSES["tinybert_attention"](), s, t) == pytest.approx(by_hand, rel=1e-5)  # uniform: 1->2, 2->4


def test_minilm_is_kl_of_attention_plus_kl_of_value_relations_of_the_last_layer():
    s, t = internals(layers=2, mask=[[1, 1, 0]]), internals(layers=3, mask=[[1, 1, 0]], seed=1)
    real = [0, 1]

    def by_hand(ti):
        attention = relation_kl_by_hand((t.queries[ti], t.keys[ti]), (s.queries[-1], s.keys[-1]), 2, real)
        values = relation_kl_by_hand((t.values[ti], t.values[ti]), (s.values[-1], s.values[-1]), 2, real)
        return attention + values

    assert value(LOSSES["minilm"](), s, t) == pytest.approx(by_hand(2), rel=1e-5)
    assert value(LOSSES["minilm"](teacher_layer="2"), s, t) == pytest.approx(by_hand(1), rel=1e-5)


def test_minilmv2_splits_q_k_v_into_relation_heads_so_head_counts_may_differ():
    s = internals(layers=2, width=4, heads=2, mask=[[1, 1, 0]])
    t = internals(layers=3, width=6, heads=3, mask=[[1, 1, 0]], seed=1)
    real = [0, 1]

    def by_hand(ti):
        return sum(relation_kl_by_hand((tp[ti], tp[ti]), (sp[-1], sp[-1]), 2, real)
                   for sp, tp in ((s.queries, t.queries), (s.keys, t.keys), (s.values, t.values)))

    assert value(LOSSES["minilmv2"](relation_heads=2), s, t) == pytest.approx(by_hand(2), rel=1e-5)
    assert value(LOSSES["minilmv2"](relation_heads=2, teacher_layer=1), s, t) == pytest.approx(by_hand(0), rel=1e-5)


def test_deit_hard_is_cross_entropy_of_the_distillation_head_against_the_teacher_argmax():
    dist = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    teacher = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]])
    expected = mean(-math.log(softmax(row)[target]) for row, target in zip(dist.tolist(), [1, 0]))
    batch = KDBatch(torch.zeros(2, 3), teacher, torch.zeros(2, dtype=torch.long), student_dist_logits=dist)
    assert float(LOSSES["deit_hard"]()(batch)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(RuntimeError, match="distillation-token"):
        LOSSES["deit_hard"]()(KDBatch(torch.zeros(2, 3), teacher, torch.zeros(2, dtype=torch.long)))


def build(name):
    return LOSSES[name](relation_heads=2) if name == "minilmv2" else LOSSES[name]()


@pytest.mark.parametrize("name", INTERNAL_LOSSES)
def test_padded_tokens_do_not_change_the_loss(name):
    mask = [[1, 1, 1, 1], [1, 1, 0, 0]]
    s, t = internals(batch=2, length=4, mask=mask), internals(batch=2, length=4, mask=mask, seed=1)

    def unmasked():
        no_mask = [TransformerInternals(x.hidden, x.queries, x.keys, x.values, x.heads) for x in (s, t)]
        return value(build(name), *no_mask)

    before, before_unmasked = value(build(name), s, t), unmasked()
    g = torch.Generator().manual_seed(2)
    for part in (*s.hidden, *s.queries, *s.keys, *s.values, *t.hidden, *t.queries, *t.keys, *t.values):
        part[1, 2:] = torch.randn(2, part.shape[-1], generator=g) * 5
    assert value(build(name), s, t) == pytest.approx(before, rel=1e-5)
    assert unmasked() != pytest.approx(before_unmasked, rel=1e-3)  # the same change counts where tokens are real


@pytest.mark.parametrize("name", INTERNAL_LOSSES)
def test_a_student_identical_to_its_teacher_has_zero_loss(name):
    teacher = internals(batch=2, mask=[[1, 1, 1], [1, 1, 0]])
    student = TransformerInternals([h.clone() for h in teacher.hidden], [q.clone() for q in teacher.queries],
                                   [k.clone() for k in teacher.keys], [v.clone() for v in teacher.values],
                                   teacher.heads, teacher.attention_mask)
    assert value(build(name), student, teacher) == pytest.approx(0.0, abs=1e-5)
    assert "arXiv" in LOSSES[name].__doc__


@pytest.mark.parametrize("name", ["hidden_cosine", "tinybert_hidden"])
def test_the_width_projection_is_a_parameter_of_the_loss_and_is_trained(name):
    s, t = internals(width=4, mask=[[1, 1, 0]]), internals(width=6, mask=[[1, 1, 0]], seed=1)
    with pytest.raises(RuntimeError, match="setup_widths"):
        LOSSES[name]()(kd_batch(s, t))
    loss = LOSSES[name]()
    loss.setup(torch.Size([1, 3, 4]), torch.Size([1, 3, 6]))  # as FitNet's connector: before the optimizer exists
    assert [p.shape for p in loss.parameters()] == [torch.Size([6, 4])]
    s.hidden[-1].requires_grad_(True)
    loss(kd_batch(s, t)).backward()
    assert loss.projection.weight.grad.abs().sum() > 0 and s.hidden[-1].grad.abs().sum() > 0
    same = LOSSES[name]()
    same.setup_widths(4, 4)
    assert list(same.parameters()) == []


def tiny_bert(**extra):
    config = BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100, **extra)
    return BertForSequenceClassification(config).eval()


def tiny_distilbert(**extra):
    config = DistilBertConfig(n_layers=2, dim=32, n_heads=2, hidden_dim=64, vocab_size=100, **extra)
    return DistilBertForSequenceClassification(config).eval()


def tiny_deit(**extra):
    return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             embed_dim=32, depth=2, num_heads=2, num_classes=5, **extra).eval()


def attention_probabilities(internals_: TransformerInternals, layer: int) -> torch.Tensor:
    scores = scaled_products(internals_.queries[layer], internals_.keys[layer], internals_.heads)
    padded = ~internals_.token_mask()[:, None, None, :]
    return scores.masked_fill(padded, float("-inf")).softmax(-1)


@pytest.mark.parametrize("make", [tiny_bert, tiny_distilbert])
def test_taps_on_hugging_face_models_give_hidden_states_and_q_k_that_reproduce_their_attention(make):
    torch.manual_seed(0)
    model = make(attn_implementation="eager")
    taps = TransformerTaps(model)
    ids, mask = torch.randint(1, 100, (2, 5)), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    got = taps.take(mask)
    assert len(got.hidden) == 3 and len(got.queries) == len(got.keys) == len(got.values) == 2 and got.heads == 2
    assert all(h.shape == (2, 5, 32) for h in got.hidden + got.queries + got.keys + got.values)
    for mine, theirs in zip(got.hidden, out.hidden_states):
        torch.testing.assert_close(mine, theirs)
    for layer in range(2):
        torch.testing.assert_close(attention_probabilities(got, layer), out.attentions[layer])
    taps.remove()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    with pytest.raises(RuntimeError, match="no complete forward"):
        taps.take(mask)


def test_taps_work_under_the_default_sdpa_attention():
    torch.manual_seed(0)
    sdpa, eager = tiny_bert(), tiny_bert(attn_implementation="eager")
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation != "eager"
    ids, mask = torch.randint(1, 100, (2, 6)), torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
    taps = TransformerTaps(sdpa)
    with torch.no_grad():
        sdpa(input_ids=ids, attention_mask=mask)
        reference = eager(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    got = taps.take(mask)
    for layer in range(2):
        torch.testing.assert_close(attention_probabilities(got, layer), reference[layer])


def own_attention(model):
    """The attention probabilities timm computes itself (its non-fused path, seen at attn_drop)."""
    seen = []
    for block in model.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o))
    return seen


@pytest.mark.parametrize("make", [tiny_deit, lambda: timm.create_model(
    "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
    num_classes=5, qk_norm=True).eval()], ids=["deit_distilled", "vit_qk_norm"])
def test_taps_on_timm_vits_split_the_fused_qkv_and_start_at_the_first_block_input(make):
    torch.manual_seed(0)
    model = make()
    seen = own_attention(model)
    taps = TransformerTaps(model)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(images)
        tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    got = taps.take()
    tokens_count = 16 + model.num_prefix_tokens
    assert len(got.hidden) == 3 and all(h.shape == (2, tokens_count, 32) for h in got.hidden + got.queries)
    torch.testing.assert_close(got.hidden[0], tokens)
    torch.testing.assert_close(model.norm(got.hidden[-1]), features)
    for layer in range(2):
        torch.testing.assert_close(attention_probabilities(got, layer), seen[layer])


def test_describe_transformer_reads_shapes_on_the_meta_device_and_refuses_other_models():
    with torch.device("meta"):
        bert = BertForSequenceClassification(BertConfig(num_hidden_layers=3, hidden_size=48, num_attention_heads=4,
                                                        intermediate_size=64, vocab_size=100))
        distil = tiny_distilbert()
        deit = tiny_deit()
    assert describe_transformer(bert) == {"layers": 3, "hidden": 48, "heads": 4, "family": "bert",
                                          "attention_width": 48, "distillation_token": False}
    assert describe_transformer(distil)["family"] == "distilbert" and describe_transformer(distil)["layers"] == 2
    assert describe_transformer(deit) == {"layers": 2, "hidden": 32, "heads": 2, "family": "vit",
                                          "attention_width": 32, "distillation_token": True}
    convnet = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(NotATransformer, match="Sequential is not a recognised Transformer"):
        describe_transformer(convnet)
    with pytest.raises(NotATransformer):
        TransformerTaps(convnet)


STUDENT = {"layers": 2, "hidden": 32, "heads": 2, "family": "bert", "attention_width": 32, "distillation_token": False}
TEACHER = {"layers": 4, "hidden": 48, "heads": 4, "family": "bert", "attention_width": 48, "distillation_token": False}
SAME_HEADS = dict(TEACHER, heads=2)


@pytest.mark.parametrize("name, options, teacher, message", [
    ("tinybert_attention", {"layer_map": {3: 2}}, SAME_HEADS, "layer_map: student layer 3 is out of range 1..2"),
    ("tinybert_attention", {"layer_map": {"1": 5}}, SAME_HEADS, "layer_map: teacher layer 5 is out of range 1..4"),
    ("tinybert_attention", {}, TEACHER, "needs equal head counts: the student has 2 heads, the teacher 4"),
    ("tinybert_hidden", {"layer_map": {"1": 5}}, TEACHER, "layer_map: teacher layer 5 is out of range 0..4"),
    ("tinybert_hidden", {"layer_map": {"one": 1}}, TEACHER, "layer_map: must be a layer number, got 'one'"),
    ("minilm", {}, TEACHER, "needs equal head counts"),
    ("minilm", {"teacher_layer": 0}, SAME_HEADS, "teacher_layer: layer 0 is out of range 1..4"),
    ("minilmv2", {"relation_heads": 5}, TEACHER, "relation_heads: 5 does not divide the student's attention width 32"),
    ("minilmv2", {"teacher_layer": 7}, TEACHER, "teacher_layer: layer 7 is out of range 1..4"),
    ("minilmv2", {"relation_heads": 0}, TEACHER, "relation_heads: must be a whole number >= 1"),
    ("deit_hard", {}, TEACHER, "deit_hard needs a student with a distillation token"),
])
def test_bad_options_are_one_line_naming_the_problem(name, options, teacher, message):
    problem = check_transformer_loss(name, options, STUDENT, teacher)
    assert problem is not None and problem.startswith(message) and "\n" not in problem


def test_good_options_pass_the_check():
    assert check_transformer_loss("tinybert_attention", {"layer_map": {"1": 2, "2": 4}}, STUDENT, SAME_HEADS) is None
    assert check_transformer_loss("tinybert_hidden", {}, STUDENT, TEACHER) is None
    assert check_transformer_loss("minilm", {"teacher_layer": 3}, STUDENT, SAME_HEADS) is None
    assert check_transformer_loss("minilmv2", {"relation_heads": 8, "teacher_layer": "3"}, STUDENT, TEACHER) is None
    assert check_transformer_loss("kd", {}, STUDENT, TEACHER) is None  # not a Transformer loss: nothing to check


def test_every_loss_trains_a_bert_student_from_a_deeper_wider_bert_teacher():
    torch.manual_seed(0)
    student = tiny_bert().train()
    teacher = BertForSequenceClassification(BertConfig(num_hidden_layers=4, hidden_size=48, num_attention_heads=2,
                                                       intermediate_size=64, vocab_size=100)).eval()
    s_desc, t_desc = describe_transformer(student), describe_transformer(teacher)
    s_taps, t_taps = TransformerTaps(student), TransformerTaps(teacher)
    ids, mask = torch.randint(1, 100, (3, 7)), torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])
    for name in INTERNAL_LOSSES:
        assert check_transformer_loss(name, {}, s_desc, t_desc) is None
        loss = LOSSES[name]()
        if hasattr(loss, "setup_widths"):
            loss.setup_widths(s_desc["hidden"], t_desc["hidden"])
        logits = student(input_ids=ids, attention_mask=mask).logits
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids, attention_mask=mask).logits
        batch = KDBatch(logits, teacher_logits, torch.zeros(3, dtype=torch.long),
                        student_internals=s_taps.take(mask), teacher_internals=t_taps.take(mask))
        student.zero_grad()
        total = loss(batch)
        total.backward()
        grads = [p.grad for p in student.bert.encoder.layer[-1].parameters() if p.grad is not None]
        assert float(total.detach()) > 0 and grads and all(torch.isfinite(g).all() for g in grads), name
    s_taps.remove()
    t_taps.remove()
