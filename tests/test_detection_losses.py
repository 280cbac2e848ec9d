"""Detection distillation losses against hand computations (numpy and explicit arithmetic) and identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.tasks.object_detection.detection_losses import (
    FEATURE_LOSSES,
    FeatureAdapter,
    align,
    box_kd,
    box_kd_weights,
    check_level_map,
    cwd_loss,
    dense_class_kd,
    feature_kd,
    fgd_attention,
    fgd_loss,
    fgd_masks,
    level_pairs,
    make_adapters,
    pkd_loss,
)

# [1, 2, 2, 2] maps: two channels of 2 x 2
S1 = [[[1.0, 2.0], [3.0, 4.0]], [[0.5, -1.0], [2.0, 0.0]]]
T1 = [[[2.0, 1.0], [5.0, 3.0]], [[-2.0, 1.5], [0.0, 4.0]]]


def fmap(*samples) -> torch.Tensor:
    return torch.tensor(samples, dtype=torch.float64)


def rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def approx(x, rel=1e-6, abs=1e-9):
    return pytest.approx(x, rel=rel, abs=abs)


def close(tensor, expected, rtol=1e-6):
    got = tensor.detach().double().numpy()
    np.testing.assert_allclose(got, np.array(expected, dtype=np.float64), rtol=rtol, atol=1e-12)


# ---------------------------------------------------------------- numpy references


def np_standardize(x: np.ndarray, axes) -> np.ndarray:
    count = int(np.prod([x.shape[a] for a in axes]))
    std = x.std(axis=axes, keepdims=True, ddof=1 if count > 1 else 0)
    return (x - x.mean(axis=axes, keepdims=True)) / (std + 1e-6)


def np_pkd(s, t, axes):
    return float(((np_standardize(s, axes) - np_standardize(t, axes)) ** 2).mean() / 2)


def np_softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def np_cwd(s, t, tau):
    n, c = s.shape[:2]
    total = 0.0
    for b in range(n):
        for ch in range(c):
            p = np_softmax(t[b, ch].ravel() / tau)
            q = np_softmax(s[b, ch].ravel() / tau)
            total += float((p * np.log(p / q)).sum())
    return total * tau * tau / (n * c)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- PKD


def test_pkd_by_hand_one_sample():
    s, t = fmap(S1), fmap(T1)
    # channel 0 of the student, explicitly: values 1..4, mean 2.5, unbiased std sqrt(5/3)
    std = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)
    assert std == approx(math.sqrt(5 / 3))
    assert float(pkd_loss(s, t)) == approx(np_pkd(s.numpy(), t.numpy(), (0, 2, 3)))
    # batch 1: the per-sample form is the same standardization
    assert float(pkd_loss(s, t, per_sample=True)) == approx(float(pkd_loss(s, t)))


def test_pkd_by_hand_batch_two_standardizes_over_batch_by_default():
    s, t = rand(2, 3, 2, 2, seed=1), rand(2, 3, 2, 2, seed=2) * 4 + 1
    s[1] *= 10  # the second sample is much louder: the two forms now differ
    batch_wide = np_pkd(s.numpy(), t.numpy(), (0, 2, 3))
    per_sample = np_pkd(s.numpy(), t.numpy(), (2, 3))
    assert float(pkd_loss(s, t)) == approx(batch_wide)
    assert float(pkd_loss(s, t, per_sample=True)) == approx(per_sample)
    assert batch_wide != approx(per_sample)


def test_pkd_is_zero_for_equal_maps_and_ignores_teacher_scale_per_channel():
    s, t = rand(2, 3, 4, 5, seed=3), rand(2, 3, 4, 5, seed=4)
    assert float(pkd_loss(t, t)) == approx(0.0, abs=1e-12)
    scale = torch.tensor([0.5, 3.0, 250.0], dtype=torch.float64).view(1, 3, 1, 1)
    shift = torch.tensor([5.0, -2.0, 1e3], dtype=torch.float64).view(1, 3, 1, 1)
    assert float(pkd_loss(s, t * scale + shift)) == approx(float(pkd_loss(s, t)), rel=1e-5)
    # per sample, each sample's channel may have its own affine change
    scale2 = torch.rand(2, 3, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 10 + 0.5
    assert float(pkd_loss(s, t * scale2 - 7.0, per_sample=True)) == approx(
        float(pkd_loss(s, t, per_sample=True)), rel=1e-5
    )


def test_pkd_constant_channel_and_single_position_stay_finite():
    s, t = torch.zeros(1, 2, 1, 1), torch.ones(1, 2, 1, 1)
    assert float(pkd_loss(s, t)) == 0.0
    # a constant student standardizes to 0; the teacher's 18 standardized values have sum of squares
    # 17 (unbiased std), so the loss is 17 / 18 / 2
    assert float(pkd_loss(torch.full((2, 1, 3, 3), 4.0), rand(2, 1, 3, 3).float())) == approx(17 / 36, rel=1e-5)


# ---------------------------------------------------------------- CWD


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_cwd_by_hand(tau):
    s, t = fmap(S1), fmap(T1)
    assert float(cwd_loss(s, t, tau=tau)) == approx(np_cwd(s.numpy(), t.numpy(), tau))
    s2, t2 = rand(2, 3, 2, 3, seed=6), rand(2, 3, 2, 3, seed=7)
    assert float(cwd_loss(s2, t2, tau=tau)) == approx(np_cwd(s2.numpy(), t2.numpy(), tau))


def test_cwd_explicit_single_channel():
    # one channel of two positions: student logits (0, 0), teacher (log 3, 0) -> p = (3/4, 1/4), q = (1/2, 1/2)
    s = torch.tensor([[[[0.0, 0.0]]]])
    t = torch.tensor([[[[math.log(3.0), 0.0]]]])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(cwd_loss(s, t)) == approx(expected, rel=1e-6)
    assert float(cwd_loss(t, t)) == approx(0.0, abs=1e-7)


# ---------------------------------------------------------------- FGD


def test_fgd_masks_by_hand():
    # stride 8 on a 4 x 4 map; box A (0,0,16,16) -> cells 0..2 (floor 0, ceil 2, inclusive) -> 1/9;
    # box B (8,8,16,16) -> cells 1..2 -> 1/4, which wins where they overlap
    fg, bg = fgd_masks([torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 16.0, 16.0]]), torch.zeros(0, 4)], 4, 4, 8)
    a, b = 1 / 9, 1 / 4
    expected_fg = [[a, a, a, 0], [a, b, b, 0], [a, b, b, 0], [0, 0, 0, 0]]
    close(fg[0], expected_fg)
    off = 1 / 7  # 7 background cells
    close(bg[0], [[0, 0, 0, off], [0, 0, 0, off], [0, 0, 0, off], [off] * 4])
    assert fg[1].tolist() == [[0.0] * 4] * 4  # no boxes: all background, 1/16 each
    close(bg[1], [[1 / 16] * 4] * 4)


def test_fgd_mask_of_a_box_covering_the_map_counts_cells_beyond_it():
    # (0,0,16,16) at stride 8 on a 2 x 2 map: rows/cols 0..2 counted (3 x 3), only 2 x 2 exist
    fg, bg = fgd_masks([torch.tensor([[0.0, 0.0, 16.0, 16.0]])], 2, 2, 8)
    close(fg[0], [[1 / 9, 1 / 9], [1 / 9, 1 / 9]])
    assert bg[0].tolist() == [[0.0, 0.0], [0.0, 0.0]]  # no background: nothing to divide by


def np_attention(x, temp):
    c, h, w = x.shape
    a = np.abs(x)
    spatial = h * w * np_softmax(a.mean(axis=0).ravel() / temp).reshape(h, w)
    channel = c * np_softmax(a.mean(axis=(1, 2)) / temp)
    return spatial, channel


def test_fgd_by_hand():
    s = fmap([[[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]], [[2.0, 0.5, -1.0], [1.5, -0.5, 2.0]]])
    t = fmap([[[2.0, -1.0, 0.0], [1.0, 2.5, -2.0]], [[0.5, 1.0, -3.0], [2.0, 0.0, 1.0]]])
    # box (0,0,4,4) at stride 8 -> (0,0,0.5,0.5) -> cells rows 0..1, cols 0..1: weight 1/4; 2 background cells: 1/2
    fg = np.array([[0.25, 0.25, 0.0], [0.25, 0.25, 0.0]])
    bg = np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 0.5]])
    temp, alpha, beta, gamma = 0.5, 2.0, 3.0, 5.0
    sa_t, ca_t = np_attention(t.numpy()[0], temp)
    sa_s, ca_s = np_attention(s.numpy()[0], temp)
    diff2 = (t.numpy()[0] - s.numpy()[0]) ** 2
    cells = [(c, h, w) for c in range(2) for h in range(2) for w in range(3)]
    loss_fg = sum(fg[h, w] * sa_t[h, w] * ca_t[c] * diff2[c, h, w] for c, h, w in cells)
    loss_bg = sum(bg[h, w] * sa_t[h, w] * ca_t[c] * diff2[c, h, w] for c, h, w in cells)
    loss_at = np.abs(ca_t - ca_s).sum() + np.abs(sa_t - sa_s).sum()
    expected = alpha * loss_fg + beta * loss_bg + gamma * loss_at
    box = [torch.tensor([[0.0, 0.0, 4.0, 4.0]])]
    got = fgd_loss(s, t, box, 8, temperature=temp, alpha=alpha, beta=beta, gamma=gamma)
    assert float(got) == approx(float(expected))
    # attention averages 1 per sample, by construction
    sa, ca = fgd_attention(t, temp)
    assert float(sa.mean()) == approx(1.0) and float(ca.mean()) == approx(1.0)


def test_fgd_sums_over_the_batch_and_divides_by_its_size():
    s, t = rand(2, 3, 4, 4, seed=8), rand(2, 3, 4, 4, seed=9)
    boxes = [torch.tensor([[4.0, 4.0, 20.0, 12.0]]), torch.zeros(0, 4)]
    one = [fgd_loss(s[i : i + 1], t[i : i + 1], boxes[i : i + 1], 8) for i in range(2)]
    assert float(fgd_loss(s, t, boxes, 8)) == approx(float(sum(one) / 2))


def test_fgd_is_zero_for_equal_maps():
    t = rand(2, 4, 5, 6, seed=10)
    assert float(fgd_loss(t, t, [torch.tensor([[0.0, 8.0, 24.0, 30.0]]), torch.zeros(0, 4)], 8)) == 0.0


# ---------------------------------------------------------------- dense classification KD


def binary_kl(t_logit, s_logit, T):
    p, q = sigmoid(t_logit / T), sigmoid(s_logit / T)
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_dense_class_kd_by_hand(T):
    # 3 locations x 2 classes; teacher scores: loc 0 max sigmoid(2) = 0.88, loc 1 max sigmoid(-3) = 0.047
    # (ignored at threshold 0.3), loc 2 max sigmoid(0) = 0.5
    t = torch.tensor([[[2.0, -1.0], [-3.0, -4.0], [0.0, -2.0]]])
    s = torch.tensor([[[0.5, 0.5], [9.0, 9.0], [-1.0, 1.0]]])
    counted = [0, 2]
    expected = sum(binary_kl(t[0, a, c].item(), s[0, a, c].item(), T) for a in counted for c in range(2)) * T * T / 2
    assert float(dense_class_kd(s, t, temperature=T, score_threshold=0.3)) == approx(expected, rel=1e-5)


def test_dense_class_kd_ignores_locations_below_threshold():
    t = torch.tensor([[[2.0, -1.0], [-3.0, -4.0], [0.0, -2.0]]])
    s = torch.tensor([[[0.5, 0.5], [9.0, 9.0], [-1.0, 1.0]]])
    base = float(dense_class_kd(s, t))
    s2, t2 = s.clone(), t.clone()
    s2[0, 1] = torch.tensor([1e30, float("nan")])  # whatever the ignored location holds
    t2[0, 1] = torch.tensor([-50.0, -1e4])  # still below the threshold
    s2.requires_grad_(True)
    loss = dense_class_kd(s2, t2)
    assert float(loss.detach()) == approx(base, rel=1e-6)
    loss.backward()
    assert s2.grad[0, 1].tolist() == [0.0, 0.0]
    assert torch.isfinite(s2.grad).all() and s2.grad[0, 0].abs().sum() > 0


def test_dense_class_kd_without_teacher_objects_is_zero_and_differentiable():
    s = torch.randn(2, 5, 3, requires_grad=True)
    t = torch.full((2, 5, 3), -5.0)  # every score 0.0067 < 0.3
    loss = dense_class_kd(s, t)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert s.grad.abs().sum() == 0


def test_dense_class_kd_is_zero_for_equal_logits_even_saturated():
    t = torch.tensor([[[40.0, -40.0], [3.0, 0.1], [-100.0, 100.0]]])
    assert float(dense_class_kd(t, t, temperature=2.0)) == 0.0


# ---------------------------------------------------------------- box KD


def np_giou_loss(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return 1.0 - (inter / union - (hull - union) / hull)


def test_box_kd_by_hand():
    s = fmap([[0.0, 0.0, 10.0, 10.0], [10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]])
    t = fmap([[5.0, 5.0, 15.0, 15.0], [12.0, 20.0, 30.0, 44.0], [50.0, 50.0, 60.0, 60.0]])
    w = torch.tensor([[0.8, 0.4, 0.0]], dtype=torch.float64)  # the third location does not count
    # location 0: inter 25, union 175, hull 225 -> GIoU loss 1 - (1/7 - 50/225); L1 = (5+5)/100 + (5+5)/80
    giou0 = 1 - (1 / 7 - 50 / 225)
    assert np_giou_loss([0, 0, 10, 10], [5, 5, 15, 15]) == approx(giou0)
    l1_0 = 5 / 100 + 5 / 80 + 5 / 100 + 5 / 80
    l1_1 = 2 / 100 + 0 / 80 + 0 / 100 + 4 / 80
    giou1 = np_giou_loss([10, 20, 30, 40], [12, 20, 30, 44])
    expected = (0.8 * (l1_0 + giou0) + 0.4 * (l1_1 + giou1)) / (0.8 + 0.4)
    assert float(box_kd(s, t, w, (100, 80))) == approx(expected, rel=1e-6)


def test_box_kd_square_image_size_and_equal_boxes():
    b = torch.tensor([[[10.0, 10.0, 50.0, 30.0], [0.0, 0.0, 64.0, 64.0]]])
    w = torch.tensor([[0.5, 0.9]])
    assert float(box_kd(b, b, w, 64)) == approx(0.0, abs=1e-6)
    moved = b + torch.tensor([6.4, 0.0, 6.4, 0.0])  # shift by a tenth of the side
    l1 = 2 * 0.1
    gious = [np_giou_loss(b[0, i].tolist(), moved[0, i].tolist()) for i in range(2)]
    expected = (0.5 * (l1 + gious[0]) + 0.9 * (l1 + gious[1])) / 1.4
    assert float(box_kd(moved, b, w, 64)) == approx(expected, rel=1e-5)


def test_box_kd_with_zero_weights_is_zero_and_finite():
    s = torch.tensor([[[float("nan")] * 4, [1.0, 1.0, 2.0, 2.0]]], requires_grad=True)
    t = torch.tensor([[[0.0, 0.0, 5.0, 5.0], [float("inf")] * 4]])
    loss = box_kd(s, t, torch.zeros(1, 2), 32)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert s.grad.tolist() == [[[0.0] * 4, [0.0] * 4]]


def test_box_kd_weights_are_the_teacher_max_score():
    logits = torch.tensor([[[0.0, -2.0], [-1.0, 3.0]]], requires_grad=True)
    w = box_kd_weights(logits)
    close(w, [[0.5, sigmoid(3.0)]])
    assert not w.requires_grad


# ---------------------------------------------------------------- gradients reach the student only


GRADIENT_CASES = {
    "pkd": lambda s, t: pkd_loss(s, t),
    "pkd_per_sample": lambda s, t: pkd_loss(s, t, per_sample=True),
    "cwd": lambda s, t: cwd_loss(s, t, tau=2.0),
    "fgd": lambda s, t: fgd_loss(s, t, [torch.tensor([[0.0, 0.0, 12.0, 20.0]]), torch.zeros(0, 4)], 8),
    "dense_class_kd": lambda s, t: dense_class_kd(s.flatten(2).transpose(1, 2), t.flatten(2).transpose(1, 2), 2.0, 0.0),
    "box_kd": lambda s, t: box_kd(
        s.flatten(2)[:, :4].transpose(1, 2).abs().cumsum(-1),
        t.flatten(2)[:, :4].transpose(1, 2).abs().cumsum(-1),
        torch.full((2, 12), 0.5),
        32,
    ),
}


@pytest.mark.parametrize("name", list(GRADIENT_CASES))
def test_gradients_flow_to_the_student_only(name):
    s = rand(2, 4, 3, 4, seed=11).float().requires_grad_(True)
    t = rand(2, 4, 3, 4, seed=12).float().requires_grad_(True)
    loss = GRADIENT_CASES[name](s, t)
    assert loss.dim() == 0 and float(loss.detach()) > 0
    loss.backward()
    assert t.grad is None
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


# ---------------------------------------------------------------- levels, adapters, registry


def test_level_pairs_for_equal_strides():
    assert level_pairs((8, 16, 32), (8, 16, 32)) == [(0, 0), (1, 1), (2, 2)]


def test_level_pairs_for_different_strides_take_the_nearest_scale():
    assert level_pairs((8, 16, 32, 64), (8, 16, 32)) == [(0, 0), (1, 1), (2, 2), (3, 2)]
    assert level_pairs((16, 32), (8, 16, 32)) == [(0, 1), (1, 2)]
    assert level_pairs((4, 8), (8, 16)) == [(0, 0), (1, 0)]
    assert level_pairs((16,), (8, 32)) == [(0, 0)]  # 2x either way: the finer teacher level
    assert level_pairs((24,), (16, 32)) == [(0, 1)]  # 32/24 < 24/16


def test_check_level_map_messages():
    assert check_level_map([(0, 0), (1, 1), (2, 2)], 3, 3) is None
    assert check_level_map([(3, 2)], 4, 3) is None
    assert check_level_map([], 3, 3) == "no level pairs: give at least one (student level, teacher level)"
    assert check_level_map([(0, 0), (3, 1)], 3, 3) == "pair 1 (3, 1): the student has 3 feature levels, numbered 0-2"
    assert check_level_map([(0, -1)], 3, 2) == "pair 0 (0, -1): the teacher has 2 feature levels, numbered 0-1"
    assert check_level_map([(0, 0), (1, 1), (0, 0)], 3, 3) == "pair 2 (0, 0) repeats pair 0"
    assert check_level_map([(0, 0), (1,)], 3, 3) == "pair 1 (1,): expected (student level, teacher level), two integers"
    assert check_level_map([(True, 0)], 3, 3).startswith("pair 0 (True, 0): expected")
    pairs = level_pairs((8, 16, 32, 64), (8, 16, 32))
    assert check_level_map(pairs, 4, 3) is None


def test_adapters_change_channel_counts():
    pairs = [(0, 0), (1, 1), (2, 1)]
    adapters = make_adapters([16, 32, 64], [32, 32], pairs)
    assert isinstance(adapters[0], FeatureAdapter) and isinstance(adapters[1], nn.Identity)
    assert adapters[0](torch.randn(2, 16, 5, 5)).shape == (2, 32, 5, 5)
    assert adapters[2](torch.randn(2, 64, 3, 4)).shape == (2, 32, 3, 4)
    assert len(list(adapters.parameters())) == 4  # two 1x1 convs: weight and bias each


def test_align_resizes_the_student_bilinearly():
    s, t = torch.arange(4.0).view(1, 1, 2, 2), torch.zeros(1, 3, 4, 4)
    out = align(s, t)
    assert out.shape == (1, 1, 4, 4)
    # bilinear, align_corners=False: the first row of [[0, 1], [2, 3]] upsampled 2x is 0, 0.25, 0.75, 1
    assert out[0, 0, 0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])
    same = torch.zeros(1, 1, 4, 4)
    assert align(same, t) is same


def test_feature_kd_averages_over_pairs_through_adapters_and_resizing():
    student = [rand(2, 8, 8, 8, seed=20).float(), rand(2, 16, 4, 4, seed=21).float()]  # strides 4, 8
    teacher = [rand(2, 12, 4, 4, seed=22).float(), rand(2, 12, 2, 2, seed=23).float()]  # strides 8, 16
    pairs = level_pairs((4, 8), (8, 16))
    assert pairs == [(0, 0), (1, 0)]
    torch.manual_seed(0)
    adapters = make_adapters([8, 16], [12, 12], pairs)
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.zeros(0, 4)]
    for kind in FEATURE_LOSSES:
        got = feature_kd(kind, student, teacher, adapters, pairs, boxes, (8, 16))
        by_pair = []
        for n, (i, j) in enumerate(pairs):
            s = F.interpolate(adapters[n](student[i]), size=teacher[j].shape[-2:], mode="bilinear", align_corners=False)
            if kind == "fgd":
                by_pair.append(fgd_loss(s, teacher[j], boxes, (8, 16)[j]))
            else:
                by_pair.append(FEATURE_LOSSES[kind](s, teacher[j]))
        assert float(got.detach()) == approx(float(sum(by_pair).detach() / 2), rel=1e-5)
    got = feature_kd("cwd", student, teacher, adapters, pairs, None, None, tau=4.0)
    assert float(got.detach()) > 0


def test_feature_kd_errors():
    student, teacher = [torch.randn(1, 8, 4, 4)], [torch.randn(1, 12, 4, 4)]
    with pytest.raises(ValueError, match="unknown feature distillation loss 'mgd'; known: cwd, fgd, pkd"):
        feature_kd("mgd", student, teacher, None, [(0, 0)], None, None)
    with pytest.raises(ValueError, match="'cwd' takes no parameter 'temperature'; it takes: tau"):
        feature_kd("cwd", student, teacher, None, [(0, 0)], None, None, temperature=2.0)
    with pytest.raises(ValueError, match=r"student width 8 != teacher width 12; pass adapters=make_adapters"):
        feature_kd("pkd", student, teacher, None, [(0, 0)], None, None)
    with pytest.raises(ValueError, match=r"level pairs: pair 0 \(1, 0\): the student has 1 feature levels"):
        feature_kd("pkd", student, teacher, None, [(1, 0)], None, None)
    with pytest.raises(ValueError, match="fgd needs gt_boxes"):
        feature_kd("fgd", student, teacher, make_adapters([8], [12], [(0, 0)]), [(0, 0)], None, None)
