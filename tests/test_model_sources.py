"""Model sources from other libraries: timm:NAME, hf:FOLDER, torchvision:NAME, with weights from local files only."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file

from compress.cli import main
from compress.exporting.torch_to_onnx import export_onnx
from compress.models import ModelSpec, build_model, check_model_name

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Any hub call fails: every model here must be built from local files alone."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def rgb_npz(tmp_path):
    """Digits upsampled to 3x32x32 (timm and ViT models want more than 8x8 pixels), 10 classes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.kron(digits.images[:600] / 16.0, np.ones((4, 4)))[:, None].repeat(3, axis=1).astype(np.float32)
    np.savez(tmp_path / "digits32.npz", x=x, y=digits.target[:600])
    return "digits32.npz"


def config_for(tiny_config: dict, data: str, teacher: dict) -> dict:
    config = copy.deepcopy(tiny_config)
    config["data"] = {"source": "npz", "path": data, "val_fraction": 0.25}
    config["teacher"] = teacher
    return config


def validate(config: dict, write_pipeline, capsys) -> tuple[int, list[str]]:
    path = write_pipeline(config)
    capsys.readouterr()
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err.strip().splitlines()


def tiny_vit(folder, num_labels: int = 10):
    """A one-layer ViT saved as a Hugging Face folder (config.json + model.safetensors)."""
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    image_size=32, patch_size=8, num_labels=num_labels)
    model = transformers.AutoModelForImageClassification.from_config(config)
    model.save_pretrained(folder, safe_serialization=True)
    return model


# --- timm ----------------------------------------------------------------------------------------

def test_a_timm_model_is_built_with_the_data_geometry():
    assert check_model_name("timm:test_resnet") is None
    model = build_model(ModelSpec("timm:test_resnet", 1, 7, 32)).eval()
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)


def test_validate_names_an_unknown_timm_model(tiny_config, write_pipeline, capsys):
    tiny_config["teacher"].update(model="timm:no_such_net", kwargs={})
    code, err = validate(tiny_config, write_pipeline, capsys)
    assert code == 2 and len(err) == 1, err
    assert "pipeline.yaml: teacher.model: unknown timm model 'no_such_net'" in err[0]


def test_validate_names_a_timm_kwarg_the_model_does_not_take(tiny_config, write_pipeline, capsys, rgb_npz):
    config = config_for(tiny_config, rgb_npz, {"model": "timm:test_resnet", "kwargs": {"no_such_option": 1},
                                               "train": {"epochs": 1}})
    code, err = validate(config, write_pipeline, capsys)
    assert code == 2 and len(err) == 1, err
    assert "teacher.kwargs.no_such_option" in err[0]


def test_a_safetensors_checkpoint_that_is_not_one_is_one_line(tiny_config, write_pipeline, capsys, tmp_path, rgb_npz):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    config = config_for(tiny_config, rgb_npz, {"model": "timm:test_resnet", "checkpoint": "bad.safetensors"})
    code, err = validate(config, write_pipeline, capsys)
    assert code == 2 and len(err) == 1, err
    assert "pipeline.yaml: teacher.checkpoint: bad.safetensors: not a safetensors file" in err[0]


def test_a_missing_safetensors_checkpoint_is_one_line(tiny_config, write_pipeline, capsys, rgb_npz):
    config = config_for(tiny_config, rgb_npz, {"model": "timm:test_resnet", "checkpoint": "gone.safetensors"})
    code, err = validate(config, write_pipeline, capsys)
    assert code == 2 and len(err) == 1, err
    assert "pipeline.yaml: teacher.checkpoint: file not found: " in err[0] and "gone.safetensors" in err[0]


def test_a_safetensors_checkpoint_of_another_architecture_names_its_keys(tiny_config, write_pipeline, capsys,
                                                                         tmp_path, rgb_npz):
    other = timm.create_model("test_vit", pretrained=False, num_classes=10)
    save_file(other.state_dict(), str(tmp_path / "vit.safetensors"))
    config = config_for(tiny_config, rgb_npz, {"model": "timm:test_resnet", "checkpoint": "vit.safetensors"})
    code, err = validate(config, write_pipeline, capsys)
    assert code == 2 and len(err) == 1, err
    assert "teacher.checkpoint: vit.safetensors does not match the config: its weights do not fit timm:test_resnet" \
        in err[0] and "missing keys (" in err[0] and "unexpected keys (" in err[0] and "blocks.0.attn" in err[0]


def test_timm_teacher_from_safetensors_with_a_new_head_runs_to_an_onnx_runtime_build(
        tiny_config, write_pipeline, tmp_path, capsys, rgb_npz):
    """A 1000-class timm checkpoint for 10-class data: the head is replaced (one log line), teacher.train trains
    it, and the student distils, exports and builds as with any teacher."""
    torch.manual_seed(0)
    pretrained = timm.create_model("test_resnet", pretrained=False, num_classes=1000)
    save_file(pretrained.state_dict(), str(tmp_path / "teacher.safetensors"))
    config = config_for(tiny_config, rgb_npz, {"model": "timm:test_resnet", "checkpoint": "teacher.safetensors",
                                               "train": {"epochs": 1, "batch_size": 64, "lr": 0.005}})
    config["student"] = {"model": "cnn", "kwargs": {"channels": [8, 16]}}
    config["stages"]["distill"]["epochs"] = 2
    config["stages"]["benchmark"].update(batch_sizes=[1], runs=2)
    path, run_dir = write_pipeline(config), tmp_path / "run"
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    assert main(["run", str(path), "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr()
    log = [line for line in (out.out + out.err).splitlines() if "head" in line and "replaced" in line]
    assert len(log) == 1, out
    assert "teacher.checkpoint: teacher.safetensors has a 1000-class head, the data has 10 classes: " \
           "fc.weight, fc.bias replaced (fresh weights, trained by teacher.train)" in log[0]
    assert (run_dir / "stages" / "build" / "student.onnxruntime.fp32").is_dir()
    parity = json.loads((run_dir / "stages" / "export" / "parity.json").read_text())
    assert parity["passed"]


# --- Hugging Face --------------------------------------------------------------------------------

def test_an_hf_folder_builds_a_model_that_returns_logits_and_exports_to_onnx(tmp_path):
    original = tiny_vit(tmp_path / "vit").eval()
    assert check_model_name(f"hf:{tmp_path / 'vit'}") is None
    model = build_model(ModelSpec(f"hf:{tmp_path / 'vit'}", 3, 10, 32)).eval()
    from compress.models.external import adapt_keys, hf_state

    model.load_state_dict(adapt_keys(model, hf_state(str(tmp_path / "vit"), "AutoModelForImageClassification")))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        assert type(logits) is torch.Tensor and logits.shape == (2, 10)
        assert torch.allclose(logits, original(pixel_values=x).logits, atol=1e-6)
    export_onnx(model, (3, 32, 32), tmp_path / "vit.onnx")
    session = ort.InferenceSession(str(tmp_path / "vit.onnx"), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"input": x.numpy()})
    assert np.abs(onnx_logits - logits.numpy()).max() < 1e-4


def test_an_hf_teacher_validates_with_its_folder_weights(tiny_config, write_pipeline, capsys, tmp_path, rgb_npz):
    tiny_vit(tmp_path / "vit", num_labels=10)
    config = config_for(tiny_config, rgb_npz, {"model": "hf:vit"})
    code, err = validate(config, write_pipeline, capsys)
    assert code == 0, err


def test_an_hf_teacher_with_another_class_count_gets_a_new_head(tiny_config, write_pipeline, tmp_path, rgb_npz):
    from compress.runner import load_pipeline
    from compress.stages.teacher import TeacherStage

    original = tiny_vit(tmp_path / "vit", num_labels=5)
    pipeline = load_pipeline(write_pipeline(config_for(tiny_config, rgb_npz, {"model": "hf:vit"})))
    lines: list[str] = []
    model, head = TeacherStage.load_checkpoint(pipeline, ModelSpec(pipeline.teacher.model, 3, 10, 32), lines.append)
    assert head == ["model.classifier.weight", "model.classifier.bias"]
    assert lines == ["teacher.model: model.safetensors has a 5-class head, the data has 10 classes: "
                     "model.classifier.weight, model.classifier.bias replaced (fresh weights; set teacher.train "
                     "to train it)"]
    kept = original.state_dict()["vit.embeddings.patch_embeddings.projection.weight"]
    assert torch.equal(model.state_dict()["model.vit.embeddings.patch_embeddings.projection.weight"], kept)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("remove, words", [("config.json", "has no config.json"),
                                           ("model.safetensors", "has no model.safetensors")])
def test_an_hf_folder_without_its_files_is_one_line(tiny_config, write_pipeline, capsys, tmp_path, rgb_npz,
                                                    remove, words):
    tiny_vit(tmp_path / "vit")
    (tmp_path / "vit" / remove).unlink()
    code, err = validate(config_for(tiny_config, rgb_npz, {"model": "hf:vit"}), write_pipeline, capsys)
    assert code == 2 and len(err) == 1, err
    assert "pipeline.yaml: teacher.model: hf folder " in err[0] and words in err[0]


def test_a_missing_hf_folder_is_one_line(tiny_config, write_pipeline, capsys, rgb_npz):
    code, err = validate(config_for(tiny_config, rgb_npz, {"model": "hf:nowhere"}), write_pipeline, capsys)
    assert code == 2 and len(err) == 1, err
    assert "pipeline.yaml: teacher.model: hf folder not found: " in err[0] and "nowhere" in err[0]


# --- torchvision ---------------------------------------------------------------------------------

def test_a_torchvision_teacher_from_a_local_safetensors_file_validates(tiny_config, write_pipeline, capsys,
                                                                        tmp_path, rgb_npz):
    import torchvision

    weights = torchvision.models.get_model("resnet18", weights=None, num_classes=1000).state_dict()
    save_file(weights, str(tmp_path / "resnet18.safetensors"))
    config = config_for(tiny_config, rgb_npz, {"model": "torchvision:resnet18", "checkpoint": "resnet18.safetensors"})
    code, err = validate(config, write_pipeline, capsys)
    assert code == 0, err
