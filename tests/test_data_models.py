import numpy as np
import pytest
import torch

from compress.config import DataConfig
from compress.data import load_dataset
from compress.core.errors import UsageError
from compress.models import ModelSpec, build_model, count_macs, load_model, save_checkpoint


def test_digits_split_is_seeded_stratified_and_normalised():
    a = load_dataset(DataConfig(source="digits", val_fraction=0.2), seed=1)
    b = load_dataset(DataConfig(source="digits", val_fraction=0.2), seed=1)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.y_val) == 360 and np.array_equal(a.y_val, b.y_val)
    assert abs(float(a.x_train.mean())) < 1e-4 and abs(float(a.x_train.std()) - 1) < 0.01
    assert set(np.bincount(a.y_val)) <= set(range(34, 38))  # stratified: about 36 per class


def test_npz_source_accepts_nhwc(tmp_path):
    x = np.random.default_rng(0).random((40, 6, 6, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 4)
    data = load_dataset(DataConfig(source="npz", path=tmp_path / "d.npz"), seed=0)
    assert data.input_shape == (3, 6, 6) and data.num_classes == 4


def test_npz_without_labels_is_a_usage_error(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2, 2)))
    with pytest.raises(UsageError, match="missing y"):
        load_dataset(DataConfig(source="npz", path=tmp_path / "d.npz"), seed=0)


def test_imagefolder_source(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    data = load_dataset(DataConfig(source="imagefolder", path=tmp_path, image_size=8), seed=0)
    assert data.input_shape == (3, 8, 8) and data.class_names == ["cat", "dog"]


def make_blobs(n: int = 30):
    """A user data source: package.module:function returning (x, y)."""
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 4, 4)).astype(np.float32), np.arange(n) % 3


def test_module_function_source():
    data = load_dataset(DataConfig(source="tests.test_data_models:make_blobs", kwargs={"n": 60}), seed=0)
    assert data.num_classes == 3 and len(data.y_train) + len(data.y_val) == 60


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet8", "resnet8x4", "resnet32x4"])
@pytest.mark.parametrize("geometry", [(1, 10, 8), (3, 5, 32)])
def test_zoo_models_take_any_geometry(name, geometry):
    channels, classes, size = geometry
    model = build_model(ModelSpec(name, channels, classes, size)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, size, size)).shape == (2, classes)


def test_resnet8x4_is_under_a_fifth_of_resnet32x4_macs():
    small = count_macs(build_model(ModelSpec("resnet8x4", 3, 100, 32)), (3, 32, 32))
    big = count_macs(build_model(ModelSpec("resnet32x4", 3, 100, 32)), (3, 32, 32))
    assert 0.1 < small / big < 0.2
    assert 1.0e9 < big < 1.2e9  # the KD literature's ~1.08 GMACs for resnet32x4 on CIFAR


def test_checkpoint_roundtrip_uses_weights_only(tmp_path):
    spec = ModelSpec("cnn", 1, 10, 8, {"channels": [4, 8]})
    model = build_model(spec)
    save_checkpoint(tmp_path / "m.pt", model, spec)
    loaded, loaded_spec = load_model(tmp_path / "m.pt")
    assert loaded_spec == spec
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(model.eval()(x), loaded(x))


def test_pickled_module_is_refused(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "evil.pt")
    with pytest.raises(UsageError, match="weights_only"):
        load_model(tmp_path / "evil.pt", ModelSpec("mlp", 1, 2, 2))


def test_user_factory_gets_only_the_geometry_it_accepts():
    model = build_model(ModelSpec("tests.test_data_models:tiny_factory", 1, 10, 8, {"width": 3}))
    assert model.out_features == 10


def tiny_factory(num_classes: int, width: int = 4):
    return torch.nn.Linear(width, num_classes)
