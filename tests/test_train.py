"""The training loop: best checkpoint, metrics.jsonl, and exact resume after a crash."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compress.config import DataConfig, TrainConfig
from compress.data import load_dataset
from compress.distill.losses import LOSSES, HintonKD, KDBatch
from compress.distill.train import fit
from compress.models import ModelSpec, build_model


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(source="digits"), seed=0)


def new_model():
    torch.manual_seed(0)
    return build_model(ModelSpec("mlp", 1, 10, 8, {"hidden": [32]}))


def train(digits, work_dir, loss_fn=None, epochs=3):
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=0.01)
    model = new_model()
    kwargs = {"loss_fn": loss_fn} if loss_fn else {}
    result = fit(model, digits.train, digits.val, cfg, work_dir, 0,
                 log=lambda _: None, **kwargs)
    return model, result


def test_fit_learns_and_writes_metrics(digits, tmp_path):
    model, result = train(digits, tmp_path)
    assert result.best_accuracy > 0.85 and 1 <= result.best_epoch <= 3
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert {"loss", "ce", "lr", "val_top1", "seconds"} <= set(lines[0])
    assert lines[-1]["lr"] < lines[0]["lr"]  # cosine schedule decays


def test_crash_mid_training_resumes_to_the_same_weights(digits, tmp_path):
    reference, _ = train(digits, tmp_path / "reference")

    calls = {"n": 0}
    steps_per_epoch = int(np.ceil(len(digits.y_train) / 64))

    def crashing_loss(logits, batch):
        calls["n"] += 1
        if calls["n"] > 2 * steps_per_epoch:  # dies inside epoch 3
            raise KeyboardInterrupt
        loss = F.cross_entropy(logits, batch.labels)
        return loss, {"ce": float(loss.detach())}

    with pytest.raises(KeyboardInterrupt):
        train(digits, tmp_path / "crashed", crashing_loss)
    assert torch.load(tmp_path / "crashed" / "last.pt", weights_only=True)["epoch"] == 2

    logs = []
    resumed = new_model()
    result = fit(resumed, digits.train, digits.val,
                 TrainConfig(epochs=3, batch_size=64, lr=0.01), tmp_path / "crashed", 0, log=logs.append)
    assert result.resumed_from == 2 and "resuming from epoch 2/3" in logs[0]
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_hinton_kd_is_zero_for_equal_logits_and_positive_otherwise():
    logits, labels = torch.randn(5, 10), torch.zeros(5, dtype=torch.long)
    kd = HintonKD(temperature=4.0)
    assert float(kd(KDBatch(logits, logits, labels))) == pytest.approx(0.0, abs=1e-6)
    assert float(kd(KDBatch(logits, torch.randn(5, 10), labels))) > 0
    assert {"kd", "mse"} <= set(LOSSES)
