"""The distillation objective, the teacher-output cache, feature paths, the transfer set and training options."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from compress.cli import main
from compress.config import DataConfig, TrainConfig, TransferConfig
from compress.data import load_dataset
from compress.data.splits import ArraySplit
from compress.distill.objective import LossSpec, Objective
from compress.distill.train import NO_LABEL, Batch, augment, fit, lr_factor
from compress.core.errors import ConfigError
from compress.models import ModelSpec, build_model


def cnn(channels, seed=0):
    torch.manual_seed(seed)
    return build_model(ModelSpec("cnn", 1, 10, 8, {"channels": channels}))


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(source="digits"), seed=0)


def count_forwards(model):
    calls = {"n": 0}
    model.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    return calls


SPECS = [LossSpec(name="kd", weight=0.9), LossSpec(name="ce", weight=0.1),
         LossSpec(name="fitnet", student="layers.6", teacher="layers.6")]


def test_cached_teacher_outputs_equal_a_fresh_teacher_run_and_the_log_says_which_path(digits):
    x = digits.x_train[:100]
    logs = []
    student, teacher = cnn([8, 16]), cnn([32, 64], seed=1)
    split = ArraySplit(x, digits.y_train[:100])
    cached = Objective(SPECS, student, teacher, split, TrainConfig(), 4.0, log=logs.append)
    assert "computed once and reused" in logs[-1]
    fresh = Objective(SPECS, student, teacher, split, TrainConfig(), 4.0, use_cache=False, log=logs.append)
    assert "runs on every batch" in logs[-1]
    Objective(SPECS, cnn([8, 16]), teacher, split, TrainConfig(crop_padding=1), 4.0, log=logs.append)
    assert "random augmentation" in logs[-1]
    fresh.terms[2][2].load_state_dict(cached.terms[2][2].state_dict())  # same connector weights

    calls = count_forwards(teacher)
    idx = torch.tensor([3, 17, 42, 99])
    batch = Batch(torch.as_tensor(x[idx.numpy()]), torch.as_tensor(digits.y_train[idx.numpy()]), idx)
    student.eval()
    loss_cached, parts_cached = cached(student(batch.x), batch)
    assert calls["n"] == 0  # served from the cache
    loss_fresh, parts_fresh = fresh(student(batch.x), batch)
    assert calls["n"] == 1
    assert set(parts_cached) == {"kd", "ce", "fitnet"}
    assert float(loss_cached.detach()) == pytest.approx(float(loss_fresh.detach()), rel=1e-5)


@pytest.mark.parametrize("spec, field, words", [
    (LossSpec(name="fitnet", student="layers.99", teacher="layers.6"), "losses.0.student", "no module 'layers.99'"),
    (LossSpec(name="at", student="layers.2", teacher="head"), "losses.0.teacher", "no module 'head'"),
    (LossSpec(name="at", student="layers.2", teacher="fc"), "losses.0", "(N, C, H, W)"),
    (LossSpec(name="fitnet", student="layers.2", teacher="fc"), "losses.0", "must both be (N, C)"),
])
def test_a_bad_feature_path_or_shape_is_a_config_error_listing_modules(digits, spec, field, words):
    with pytest.raises(ConfigError) as error:
        Objective([spec], cnn([8, 16]), cnn([32, 64]), digits.train.subset(range(4)), TrainConfig(), 4.0,
                  log=lambda _: None)
    assert error.value.path == f"stages.distill.{field}" and words in error.value.message
    if "no module" in words:
        assert "modules: layers, layers.0, layers.1" in error.value.message


@pytest.mark.parametrize("distill, path, words", [
    ({"losses": [{"name": "kdd"}]}, "stages.distill.losses.0.name", "unknown loss 'kdd'; known: at, ce, deit_hard, dist, dkd"),
    ({"losses": [{"name": "kd", "temprature": 2}]}, "stages.distill.losses.0.temprature", "has no option"),
    ({"losses": [{"name": "fitnet", "student": "layers.1"}]}, "stages.distill.losses.0.teacher", "needs 'teacher'"),
    ({"losses": [{"name": "ce"}]}, "stages.distill.losses", "no loss uses the teacher"),
    ({"losses": [{"name": "kd", "weight": -1}]}, "stages.distill.losses.0.weight", "greater than or equal to 0"),
    ({"losses": [{"name": "kd"}], "alpha": 0.5}, "stages.distill.alpha", "give each loss a weight"),
    ({"losses": []}, "stages.distill.losses", "at least one loss"),
])
def test_bad_loss_config_is_one_line_with_exit_2(tiny_config, write_pipeline, capsys, distill, path, words):
    tiny_config["stages"]["distill"] = distill
    assert main(["validate", str(write_pipeline(tiny_config))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}: " in err and words in err


def test_labeled_fraction_keeps_labels_on_part_of_train_and_moves_the_rest_to_transfer():
    full = load_dataset(DataConfig(source="digits"), seed=0)
    part = load_dataset(DataConfig(source="digits", transfer=TransferConfig(labeled_fraction=0.1)), seed=0)
    assert len(part.y_train) == round(0.1 * len(full.y_train)) and set(part.y_train) == set(range(10))
    assert len(part.x_train) + len(part.x_transfer) == len(full.x_train)
    np.testing.assert_array_equal(part.x_val, full.x_val)


def test_transfer_source_adds_unlabelled_inputs_normalised_like_train(tmp_path):
    x = np.random.default_rng(0).random((30, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "extra.npz", x=x, y=np.zeros(30, dtype=np.int64))
    data = load_dataset(DataConfig(source="digits", transfer=TransferConfig(source="npz", path=tmp_path / "extra.npz")), 0)
    assert data.x_transfer.shape == (30, 1, 8, 8)
    np.testing.assert_allclose(data.x_transfer[:, 0], (x - data.mean[0]) / data.std[0], rtol=1e-5)
    np.savez(tmp_path / "wrong.npz", x=x[:, :4, :4], y=np.zeros(30, dtype=np.int64))
    with pytest.raises(Exception, match="do not match the training inputs"):
        load_dataset(DataConfig(source="digits", transfer=TransferConfig(source="npz", path=tmp_path / "wrong.npz")), 0)


def test_augment_crops_and_flips_with_a_seeded_generator():
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    cfg = TrainConfig(crop_padding=2, flip=True)
    a = augment(x, cfg, torch.Generator().manual_seed(0))
    b = augment(x, cfg, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert set(a.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def test_lr_warms_up_then_steps():
    cfg = TrainConfig(epochs=4, schedule="step", lr_steps=[2, 3], lr_gamma=0.1, warmup_epochs=1)
    factor = lr_factor(cfg, steps_per_epoch=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(15) == 1.0 and factor(25) == pytest.approx(0.1) and factor(35) == pytest.approx(0.01)


def test_fit_with_transfer_inputs_bf16_autocast_clipping_and_smoothing(digits, tmp_path):
    x = np.concatenate([digits.x_train, digits.x_train[:200]])
    y = np.concatenate([digits.y_train, np.full(200, NO_LABEL)])
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.01, amp=True, grad_clip=1.0, label_smoothing=0.1,
                      warmup_epochs=0.5, crop_padding=1)
    result = fit(cnn([8, 16]), ArraySplit(x, y), digits.val, cfg, tmp_path, 0, log=lambda _: None)
    assert result.best_accuracy > 0.25  # chance is 0.1; two short epochs under heavy regularisation
    if importlib.util.find_spec("tensorboard") is not None:  # events only when tensorboard is installed
        assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tensorboard").iterdir())
    else:
        assert not (tmp_path / "tensorboard").exists()


@pytest.mark.parametrize("transfer, path, words", [
    ({}, "data.transfer", "labeled_fraction, or both"),
    ({"labeled_fraction": 0}, "data.transfer.labeled_fraction", "greater than 0"),
    ({"source": "npz"}, "data.transfer", "needs data.transfer.path"),
    ({"source": "npz", "path": "nothing.npz"}, "data.transfer.path", "file not found"),
    ({"source": "mnist"}, "data.transfer", "unknown transfer source"),
])
def test_bad_transfer_config_is_one_line_with_exit_2(tiny_config, write_pipeline, capsys, transfer, path, words):
    tiny_config["data"]["transfer"] = transfer
    assert main(["validate", str(write_pipeline(tiny_config))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}: " in err and words in err


def test_a_wrong_feature_path_is_refused_by_validate_before_anything_trains(tiny_config, write_pipeline, tmp_path,
                                                                            capsys):
    tiny_config["stages"]["distill"] = {"epochs": 1, "losses": [
        {"name": "kd"}, {"name": "at", "student": "features.9", "teacher": "layers.2"}]}
    path = write_pipeline(tiny_config)
    expected = "stages.distill.losses.1.student: student: no module 'features.9'; modules: features, features.0"
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1
    run_dir = tmp_path / "run"
    assert main(["--quiet", "run", str(path), "--run-dir", str(run_dir)]) == 2
    assert expected in capsys.readouterr().err
    assert not (run_dir / "stages" / "teacher").exists()  # refused before the teacher trained
