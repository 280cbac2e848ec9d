"""The KD loss family: each loss is zero-ish when the student copies the teacher and grows otherwise."""

import pytest
import torch

from compress.distill.losses import LOSSES, NO_LABEL, AttentionTransfer, DecoupledKD, FitNet, KDBatch

LOGIT_LOSSES = ["kd", "lskd", "dkd", "dist", "mse"]


def batch(student, teacher, labels=None):
    labels = torch.arange(len(student)) % student.shape[1] if labels is None else labels
    return KDBatch(student, teacher, labels)


@pytest.mark.parametrize("name", LOGIT_LOSSES)
def test_logit_loss_is_minimal_for_a_copy_and_trains_the_student(name):
    torch.manual_seed(0)
    teacher = torch.randn(16, 10) * 3
    loss = LOSSES[name]()
    copy_value = float(loss(batch(teacher.clone(), teacher)))
    student = torch.zeros(16, 10, requires_grad=True)
    far_value = loss(batch(student, teacher))
    assert copy_value == pytest.approx(0.0, abs=1e-4) and float(far_value.detach()) > copy_value + 1e-3
    far_value.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert "arXiv" in LOSSES[name].__doc__  # each loss cites its paper


def test_ce_ignores_inputs_without_labels_and_is_zero_on_a_batch_without_any():
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, NO_LABEL, 2, NO_LABEL])
    ce = LOSSES["ce"]()
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    assert float(ce(batch(logits, None, labels)).detach()) == pytest.approx(float(expected.detach()))
    assert float(ce(batch(logits, None, torch.full((4,), NO_LABEL))).detach()) == 0.0


def test_dkd_uses_the_teacher_prediction_where_no_label_exists():
    torch.manual_seed(1)
    student, teacher = torch.randn(8, 5), torch.randn(8, 5)
    unlabeled = DecoupledKD()(batch(student, teacher, torch.full((8,), NO_LABEL)))
    by_teacher = DecoupledKD()(batch(student, teacher, teacher.argmax(1)))
    assert float(unlabeled) == pytest.approx(float(by_teacher))


def test_feature_losses_match_channels_and_pool_larger_maps():
    fitnet = FitNet("s", "t")
    fitnet.setup(torch.Size([2, 8, 8, 8]), torch.Size([2, 32, 4, 4]))
    features = KDBatch(torch.zeros(2, 10), torch.zeros(2, 10), torch.zeros(2, dtype=torch.long),
                       {"s": torch.randn(2, 8, 8, 8)}, {"t": torch.randn(2, 32, 4, 4)})
    assert fitnet.connector.weight.shape == (32, 8, 1, 1) and float(fitnet(features).detach()) > 0
    assert float(AttentionTransfer("s", "t")(features)) > 0
    assert FitNet.check_shapes(torch.Size([2, 8, 6, 6]), torch.Size([2, 8, 4, 4])) is not None
    assert AttentionTransfer.check_shapes(torch.Size([2, 8]), torch.Size([2, 8])) is not None
