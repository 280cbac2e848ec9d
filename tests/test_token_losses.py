"""Causal-LM distillation losses against hand computations (plain Python/numpy loops) and identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from compress.tasks.causal_lm.token_losses import (
    LM_LOSSES,
    check_layer_map,
    forward_kl,
    forward_kl_topk,
    generalized_jsd,
    hidden_state_loss,
    lm_distill_loss,
    make_projections,
    next_token_mask,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    topk_teacher,
)

B, S, V = 2, 3, 4
MASK = torch.tensor([[True, True, False], [False, True, True]])  # 4 counted tokens of 6
WILD = {(0, 2): [3e4, -2e4, 1e4, -5e3], (1, 0): [-3e4, 2.5e4, 0.0, 1e4]}  # at masked positions


def logits(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, S, V, generator=g, dtype=torch.float64) * 2
    for (b, i), row in WILD.items():  # wild but finite values where the mask is 0
        x[b, i] = torch.tensor(row, dtype=torch.float64) * (1 + seed)
    return x.float()


# ---------------------------------------------------------------- plain-Python references


def softmax(row, temperature=1.0):
    z = [x / temperature for x in row]
    top = max(z)
    e = [math.exp(x - top) for x in z]
    total = sum(e)
    return [x / total for x in e]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def mix(a, p, q):
    return [a * pi + (1 - a) * qi for pi, qi in zip(p, q)]


def token_mean(per_token, s, t, mask):
    """Loop over (batch, seq); average `per_token(student_row, teacher_row)` over counted tokens."""
    s, t = s.double().tolist(), t.double().tolist()
    total, n = 0.0, 0
    for b in range(len(s)):
        for i in range(len(s[b])):
            if mask[b][i]:
                total += per_token(s[b][i], t[b][i])
                n += 1
    return total / n


def ref_forward(s, t, mask, T=1.0):
    return token_mean(lambda a, b: kl(softmax(b, T), softmax(a, T)) * T * T, s, t, mask)


def ref_reverse(s, t, mask, T=1.0):
    return token_mean(lambda a, b: kl(softmax(a, T), softmax(b, T)), s, t, mask)


def ref_jsd(s, t, mask, beta, T=1.0):
    def per(a, b):
        p, q = softmax(b, T), softmax(a, T)
        m = mix(beta, p, q)
        return beta * kl(p, m) + (1 - beta) * kl(q, m)

    return token_mean(per, s, t, mask)


def ref_skew(s, t, mask, alpha):
    return token_mean(lambda a, b: kl(softmax(b), mix(alpha, softmax(b), softmax(a))), s, t, mask)


def ref_skew_reverse(s, t, mask, alpha):
    return token_mean(lambda a, b: kl(softmax(a), mix(alpha, softmax(a), softmax(b))), s, t, mask)


def approx(x, rel=1e-5, abs=1e-6):
    return pytest.approx(x, rel=rel, abs=abs)


# ---------------------------------------------------------------- each loss by hand


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_forward_and_reverse_kl_by_hand(T):
    s, t = logits(0), logits(1)
    assert float(forward_kl(s, t, MASK, temperature=T)) == approx(ref_forward(s, t, MASK, T))
    assert float(reverse_kl(s, t, MASK, temperature=T)) == approx(ref_reverse(s, t, MASK, T))


@pytest.mark.parametrize("beta,T", [(0.5, 1.0), (0.3, 2.0), (0.9, 1.0)])
def test_generalized_jsd_by_hand(beta, T):
    s, t = logits(0), logits(1)
    assert float(generalized_jsd(s, t, MASK, beta=beta, temperature=T)) == approx(ref_jsd(s, t, MASK, beta, T))


@pytest.mark.parametrize("alpha", [0.1, 0.4])
def test_skew_kls_by_hand(alpha):
    s, t = logits(0), logits(1)
    assert float(skew_kl(s, t, MASK, alpha=alpha)) == approx(ref_skew(s, t, MASK, alpha))
    assert float(skew_reverse_kl(s, t, MASK, alpha=alpha)) == approx(ref_skew_reverse(s, t, MASK, alpha))


ALL = {
    "forward_kl": lambda s, t, m: forward_kl(s, t, m, temperature=2.0),
    "reverse_kl": lambda s, t, m: reverse_kl(s, t, m),
    "jsd": lambda s, t, m: generalized_jsd(s, t, m, beta=0.3),
    "jsd_beta0": lambda s, t, m: generalized_jsd(s, t, m, beta=0.0),
    "jsd_beta1": lambda s, t, m: generalized_jsd(s, t, m, beta=1.0),
    "skew_kl": lambda s, t, m: skew_kl(s, t, m, alpha=0.1),
    "skew_reverse_kl": lambda s, t, m: skew_reverse_kl(s, t, m, alpha=0.1),
    "topk": lambda s, t, m: forward_kl_topk(s, *topk_teacher(t, 2, dtype=torch.float32), m),
}


@pytest.mark.parametrize("name", list(ALL))
def test_masked_positions_are_ignored_and_get_no_gradient(name):
    s, t = logits(0), logits(1)
    base = float(ALL[name](s, t, MASK))
    s2, t2 = s.clone(), t.clone()
    for b, i in WILD:  # rewrite the masked positions with other wild values
        s2[b, i] = torch.tensor([-4e4, 3e4, 7.0, 1e30])
        t2[b, i] = torch.tensor([float("inf"), -1e30, 2e4, -9.0])
    s2.requires_grad_(True)
    t2.requires_grad_(True)
    loss = ALL[name](s2, t2, MASK)
    assert float(loss.detach()) == pytest.approx(base, rel=1e-6, abs=1e-7) and math.isfinite(base)
    loss.backward()
    assert torch.isfinite(s2.grad).all()
    assert t2.grad is None  # the teacher is detached: nothing flows back to it
    for b, i in WILD:
        assert (s2.grad[b, i] == 0).all()
    counted = s2.grad[MASK]
    assert (counted.abs().sum(-1) > 0).all()  # every counted token trains the student


@pytest.mark.parametrize("name", list(ALL))
def test_every_loss_is_zero_when_the_student_copies_the_teacher(name):
    t = logits(1)
    if name == "topk":  # zero only when the student puts all its mass on the top k
        t = t.clone()
        t[..., 2:] = -float("inf")
    assert float(ALL[name](t.clone(), t, MASK)) == pytest.approx(0.0, abs=1e-6)


def test_float_mask_weights_tokens_and_an_empty_mask_gives_zero():
    s, t = logits(0), logits(1)
    assert float(forward_kl(s, t, MASK.float())) == approx(float(forward_kl(s, t, MASK)))
    weights = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    by_hand = (2 * ref_forward(s[:1, :1], t[:1, :1], [[1]]) + ref_forward(s[:1, 1:2], t[:1, 1:2], [[1]])
               + ref_forward(s[1:, 1:2], t[1:, 1:2], [[1]])) / 4
    assert float(forward_kl(s, t, weights)) == approx(by_hand)
    empty = torch.zeros(B, S, dtype=torch.bool)
    s.requires_grad_(True)
    for fn in LM_LOSSES.values():
        loss = fn(s, t, empty)
        assert float(loss.detach()) == 0.0
        loss.backward()
        assert (s.grad == 0).all()


def test_half_precision_inputs_are_computed_in_float32():
    s, t = logits(0), logits(1)
    loss = forward_kl(s.bfloat16(), t.bfloat16(), MASK)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(forward_kl(s.bfloat16().float(), t.bfloat16().float(), MASK)))


def test_minus_inf_logits_in_a_vocab_slot_stay_finite():
    s, t = logits(0), logits(1)
    s, t = s.clone(), t.clone()
    s[..., 3] = -float("inf")  # e.g. a padded vocabulary slot masked in both models
    t[..., 3] = -float("inf")
    s.requires_grad_(True)
    for name, fn in ALL.items():
        s.grad = None
        loss = fn(s, t, MASK)
        loss.backward()
        assert math.isfinite(float(loss.detach())) and torch.isfinite(s.grad).all(), name
    assert float(forward_kl(s.detach(), t, MASK)) == approx(ref_forward(s[..., :3], t[..., :3], MASK))


def test_shape_errors_are_explicit():
    s, t = logits(0), logits(1)
    with pytest.raises(ValueError, match="vocab 4 != teacher vocab 5"):
        forward_kl(s, torch.zeros(B, S, 5), MASK)
    with pytest.raises(ValueError, match="mask shape"):
        forward_kl(s, t, MASK[:, :2])
    with pytest.raises(ValueError, match="temperature"):
        forward_kl(s, t, MASK, temperature=0.0)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(s, t, MASK, beta=1.5)


# ---------------------------------------------------------------- identities


def test_forward_kl_temperature_squared_scaling():
    s, t = logits(0), logits(1)
    raw = ref_forward(s, t, MASK, 3.0) / 9.0  # KL of the softened distributions, without T^2
    assert float(forward_kl(s, t, MASK, temperature=3.0)) == approx(9.0 * raw)
    # Hinton et al.: at high T, T^2 * KL -> sum((z_s - mean z_s) - (z_t - mean z_t))^2 / (2V)
    T = 50.0

    def matching(a, b):
        da = [x - sum(a) / len(a) for x in a]
        db = [x - sum(b) / len(b) for x in b]
        return sum((x - y) ** 2 for x, y in zip(da, db)) / (2 * len(a))

    assert float(forward_kl(s, t, MASK, temperature=T)) == pytest.approx(token_mean(matching, s, t, MASK), rel=0.03)


def test_jsd_beta_limits_follow_trl():
    s, t = logits(0), logits(1)
    fwd, rev = float(forward_kl(s, t, MASK)), float(reverse_kl(s, t, MASK))
    assert float(generalized_jsd(s, t, MASK, beta=0.0)) == approx(fwd)
    assert float(generalized_jsd(s, t, MASK, beta=1.0)) == approx(rev)
    # the special cases are the limits of the normalised divergence (float64 inputs stay float64)
    s64, t64 = s.double(), t.double()
    near_fwd = [float(generalized_jsd(s64, t64, MASK, beta=e)) / e / fwd - 1 for e in (1e-2, 1e-4, 1e-6)]
    near_rev = [float(generalized_jsd(s64, t64, MASK, beta=1 - e)) / e / rev - 1 for e in (1e-2, 1e-4, 1e-6)]
    for gaps in (near_fwd, near_rev):
        assert abs(gaps[0]) > abs(gaps[1]) > abs(gaps[2]) and abs(gaps[2]) < 1e-4
    # beta = 0.5 is the symmetric JSD, bounded by log 2
    half = float(generalized_jsd(s, t, MASK, beta=0.5))
    assert half == approx(float(generalized_jsd(t, s, MASK, beta=0.5))) and 0 < half < math.log(2)


def test_skew_kls_at_alpha_zero_and_one():
    s, t = logits(0), logits(1)
    assert float(skew_kl(s, t, MASK, alpha=0.0)) == approx(float(forward_kl(s, t, MASK)))
    assert float(skew_reverse_kl(s, t, MASK, alpha=0.0)) == approx(float(reverse_kl(s, t, MASK)))
    assert float(skew_kl(s, t, MASK, alpha=1.0)) == 0.0 and float(skew_reverse_kl(s, t, MASK, alpha=1.0)) == 0.0
    # skewing bounds the divergence: it shrinks as alpha grows
    values = [float(skew_kl(s, t, MASK, alpha=a)) for a in (0.0, 0.1, 0.5, 0.9)]
    assert values == sorted(values, reverse=True)


# ---------------------------------------------------------------- top-k teacher cache


def test_topk_teacher_stores_the_largest_full_vocab_logprobs():
    t = logits(1)
    indices, logprobs = topk_teacher(t, 2)
    assert indices.dtype == torch.int32 and logprobs.dtype == torch.float16
    assert indices.shape == logprobs.shape == (B, S, 2)
    rows = t.double().tolist()
    for b in range(B):
        for i in range(S):
            z = rows[b][i]
            top = max(z)
            lse = top + math.log(sum(math.exp(x - top) for x in z))
            lp = [x - lse for x in z]  # log_softmax over the full vocab
            order = sorted(range(V), key=lambda v: -lp[v])[:2]
            assert indices[b, i].tolist() == order
            assert logprobs[b, i].float().tolist() == pytest.approx([lp[v] for v in order], rel=2e-3, abs=2e-3)
            tail = 1 - sum(math.exp(x) for x in logprobs[b, i].float().tolist())
            assert tail == pytest.approx(1 - math.exp(lp[order[0]]) - math.exp(lp[order[1]]), abs=2e-3)
    with pytest.raises(ValueError, match="k must be"):
        topk_teacher(t, V + 1)


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_forward_kl_topk_with_the_whole_vocab_equals_forward_kl(T):
    s, t = logits(0), logits(1)
    full = float(forward_kl(s, t, MASK, temperature=T))
    cached = forward_kl_topk(s, *topk_teacher(t, V, dtype=torch.float32), MASK, temperature=T)
    assert float(cached) == approx(full)
    half = forward_kl_topk(s, *topk_teacher(t, V), MASK, temperature=T)  # float16 cache: close
    assert float(half) == pytest.approx(full, rel=1e-2, abs=1e-3)


@pytest.mark.parametrize("k,T", [(1, 1.0), (2, 1.0), (3, 2.0)])
def test_forward_kl_topk_renormalises_the_top_k_by_hand(k, T):
    s, t = logits(0), logits(1)

    def per(a, b):
        p = softmax(b)  # teacher at T = 1 over the full vocab, as cached
        top = sorted(range(V), key=lambda v: -p[v])[:k]
        sharpened = [p[v] ** (1 / T) for v in top]
        p_top = [x / sum(sharpened) for x in sharpened]  # renormalised to sum 1
        q = softmax(a, T)
        return T * T * sum(pv * math.log(pv / q[v]) for pv, v in zip(p_top, top))

    got = forward_kl_topk(s, *topk_teacher(t, k, dtype=torch.float32), MASK, temperature=T)
    assert float(got) == approx(token_mean(per, s, t, MASK))


# ---------------------------------------------------------------- hidden states


def hidden(seed, layers, width):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, S, width, generator=g) for _ in range(layers + 1)]


def ref_hidden(hs, ht, pairs, mask, kind, project=None):
    per_pair = []
    for n, (i, j) in enumerate(pairs):
        total, count = 0.0, 0
        for b in range(B):
            for pos in range(S):
                if not mask[b][pos]:
                    continue
                a = np.asarray(hs[i][b, pos].tolist(), dtype=np.float64)
                if project is not None:
                    a = project[n] @ a
                c = np.asarray(ht[j][b, pos].tolist(), dtype=np.float64)
                if kind == "cosine":
                    dot = sum(x * y for x, y in zip(a, c))
                    value = 1 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in c)))
                else:
                    value = sum((x - y) ** 2 for x, y in zip(a, c)) / len(c)
                total += value
                count += 1
        per_pair.append(total / count)
    return sum(per_pair) / len(per_pair)


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_hidden_state_loss_same_width_by_hand(kind):
    hs, ht = hidden(0, 2, 5), hidden(1, 4, 5)
    hs[1][0, 2] = 1e4  # a masked position
    pairs = [(1, 2), (2, 4)]
    got = hidden_state_loss(hs, ht, pairs, MASK, kind=kind)
    assert float(got) == approx(ref_hidden(hs, ht, pairs, MASK.tolist(), kind))
    assert float(hidden_state_loss(ht, ht, [(2, 2), (4, 4)], MASK, kind=kind)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_hidden_state_loss_projects_when_widths_differ(kind):
    hs, ht = hidden(0, 2, 3), hidden(1, 4, 5)
    for h in hs:
        h.requires_grad_(True)
    pairs = [(0, 0), (2, 4)]
    projections = make_projections(3, [5] * 5, pairs)
    assert all(isinstance(p, nn.Linear) and p.in_features == 3 and p.out_features == 5 for p in projections)
    g = torch.Generator().manual_seed(2)
    for p in projections:
        p.weight.data = torch.randn(5, 3, generator=g)
    weights = [np.asarray(p.weight.tolist()) for p in projections]
    got = hidden_state_loss(hs, ht, pairs, MASK, kind=kind, projections=projections)
    assert float(got.detach()) == approx(ref_hidden(hs, ht, pairs, MASK.tolist(), kind, weights))
    got.backward()
    assert all(torch.isfinite(p.weight.grad).all() and p.weight.grad.abs().sum() > 0 for p in projections)
    assert hs[2].grad.abs().sum() > 0 and hs[1].grad is None
    with pytest.raises(ValueError, match="pass projections=make_projections"):
        hidden_state_loss(hs, ht, pairs, MASK, kind=kind)


def test_make_projections_uses_identity_where_widths_match():
    mods = make_projections([8, 8, 16], [16, 16, 16, 16], [(0, 1), (2, 3), (1, 0)])
    assert isinstance(mods[0], nn.Linear) and isinstance(mods[1], nn.Identity) and isinstance(mods[2], nn.Linear)
    assert mods[0].bias is None and (mods[0].in_features, mods[0].out_features) == (8, 16)


def test_check_layer_map_messages():
    assert check_layer_map([(0, 0), (2, 6), (4, 12)], 4, 12) is None  # index L is the last layer
    message = check_layer_map([(1, 3), (2, 6), (5, 11)], 4, 12)
    assert message.startswith("pair 2 (5, 11): the student has 4 layers") and "0-4" in message
    assert "teacher has 12 layers" in check_layer_map([(1, 13)], 4, 12)
    assert "pair 0 (-1, 3)" in check_layer_map([(-1, 3)], 4, 12)
    assert "two integers" in check_layer_map([(1, 2, 3)], 4, 12)
    with pytest.raises(ValueError, match=r"pair 1 \(3, 1\): the student has 2 layers"):
        hidden_state_loss(hidden(0, 2, 5), hidden(1, 4, 5), [(1, 1), (3, 1)], MASK)


# ---------------------------------------------------------------- registry and masks


def test_registry_dispatches_and_rejects_unknown_names_and_parameters():
    s, t = logits(0), logits(1)
    assert set(LM_LOSSES) == {"forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"}
    assert float(lm_distill_loss("jsd", s, t, MASK, beta=0.3)) == float(generalized_jsd(s, t, MASK, beta=0.3))
    assert float(lm_distill_loss("forward_kl", s, t, MASK)) == float(forward_kl(s, t, MASK))
    with pytest.raises(ValueError, match=r"unknown LM distillation loss 'tvd'; known: forward_kl, jsd, reverse_kl"):
        lm_distill_loss("tvd", s, t, MASK)
    with pytest.raises(ValueError, match=r"'skew_kl' takes no parameter 'beta'; it takes: alpha"):
        lm_distill_loss("skew_kl", s, t, MASK, beta=0.5)
    for fn in list(LM_LOSSES.values()) + [forward_kl_topk, hidden_state_loss]:
        assert "arXiv" in fn.__doc__  # each loss cites its paper


def test_next_token_mask():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, 8, 9, 10]])
    assert next_token_mask(labels).tolist() == [
        [False, True, True, False, False],
        [True, True, True, True, False],
    ]
    assert next_token_mask(labels, shift=False).tolist() == (labels != -100).tolist()
    assert next_token_mask(torch.tensor([[0, 1, 0]]), ignore_index=0, shift=False).tolist() == [[False, True, False]]
