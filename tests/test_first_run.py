"""A first run as a new user makes it: models, kwargs, checkpoints, the console and the benchmark's labels.

Each bad input is one line naming the field, exit 2, found by `compress validate` where it can be
known without reading the data, and by the teacher stage otherwise, before anything is trained.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.cli import build_parser, library_messages, main, run_log_path
from compress.config import parse_config
from compress.core.errors import UsageError
from compress.data.splits import ArraySplit
from compress.models import ModelSpec, build_model, save_checkpoint
from compress.stages import STAGES
from compress.stages.teacher import check_models

DIGITS_CNN = ModelSpec("cnn", 1, 10, 8, {"channels": [16, 32]})  # the tiny pipeline's teacher on digits


def validate(config: dict, write_pipeline, capsys, name: str = "pipeline.yaml") -> tuple[int, list[str]]:
    """`compress validate` on `config`: its exit code and its stderr lines."""
    path = write_pipeline(config, name)
    capsys.readouterr()
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err.strip().splitlines()


def with_checkpoint(tiny_config: dict, path) -> dict:
    config = copy.deepcopy(tiny_config)
    config["teacher"].pop("train")
    config["teacher"]["checkpoint"] = str(path)
    return config


class CallsSystem:
    """Unpickled, this would call os.system: the loader must refuse it by reading, never by running it."""

    def __reduce__(self):
        return os.system, ("true",)


# --- kwargs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("role, model, kwargs, field, words", [
    ("teacher", "cnn", {"num_classes": 10}, "teacher.kwargs.num_classes", "set from the data"),
    ("student", "mlp", {"hiden": [32]}, "student.kwargs.hiden", "mlp does not take 'hiden'; it takes hidden, dropout"),
    ("teacher", "resnet8", {"width": 2}, "teacher.kwargs.width", "resnet8 does not take 'width'; it takes no kwargs"),
])
def test_validate_names_a_kwarg_the_model_does_not_take(tiny_config, write_pipeline, capsys, role, model, kwargs,
                                                        field, words):
    tiny_config[role].update(model=model, kwargs=kwargs)
    code, err = validate(tiny_config, write_pipeline, capsys)
    assert code == 2 and len(err) == 1, err
    assert f"pipeline.yaml: {field}: " in err[0] and words in err[0]


def test_a_factory_with_open_kwargs_is_built_on_meta_to_find_the_one_it_refuses(tiny_config, write_pipeline, capsys,
                                                                                  tmp_path):
    (tmp_path / "first_run_open_kwargs.py").write_text(
        "import torch\n\n\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, in_channels, num_classes, input_size, width=8):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(in_channels * input_size * input_size, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1))\n\n\n"
        "def build(**kwargs):\n"
        "    return Net(**kwargs)\n")
    tiny_config["student"] = {"model": "first_run_open_kwargs:build", "kwargs": {"widht": 4}}
    code, err = validate(tiny_config, write_pipeline, capsys)
    assert code == 2 and len(err) == 1, err
    assert "student.kwargs.widht: first_run_open_kwargs:build does not take 'widht'" in err[0]


def test_build_model_refuses_geometry_in_kwargs_as_a_usage_error():
    with pytest.raises(UsageError, match="kwargs.num_classes: set from the data"):
        build_model(ModelSpec("cnn", 1, 10, 8, {"num_classes": 10}))


def test_torchvision_num_classes_in_kwargs_is_one_line_in_validate(tiny_config, write_pipeline, capsys, tmp_path):
    pytest.importorskip("torchvision")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb.npz", x=rng.random((40, 3, 32, 32)).astype(np.float32), y=np.arange(40) % 10)
    tiny_config["data"] = {"source": "npz", "path": "rgb.npz"}
    tiny_config["teacher"].update(model="torchvision:resnet18", kwargs={"num_classes": 10})
    code, err = validate(tiny_config, write_pipeline, capsys)
    assert code == 2 and len(err) == 1, err
    assert "teacher.kwargs.num_classes: set from the data" in err[0] and "TypeError" not in err[0]


# --- channels ------------------------------------------------------------------------------------

def pipeline_without_model_check(config: dict, tmp_path):
    """The schema, the stages and the tasks, without the model-name check that needs torchvision installed."""
    from compress.tasks.registry import TASKS

    return parse_config(config, "pipeline.yaml", tmp_path, stages=STAGES, tasks=TASKS)


def gray_images(folder, classes=("a", "b", "c"), per_class=2, size=8):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / name / f"{i}.png")
    return folder


def test_grayscale_data_with_a_torchvision_model_names_the_fix(tiny_config, tmp_path):
    gray_images(tmp_path / "images")
    tiny_config["data"] = {"source": "imagefolder", "path": "images", "grayscale": True, "image_size": 8}
    tiny_config["student"] = {"model": "torchvision:resnet18"}
    with pytest.raises(UsageError) as info:
        check_models(pipeline_without_model_check(tiny_config, tmp_path))
    assert str(info.value).startswith("pipeline.yaml: data.grayscale: is true, but student.model torchvision:resnet18 "
                                      "takes 3-channel images: set grayscale: false")


def test_one_channel_npz_with_a_torchvision_model_names_the_model_field(tiny_config, tmp_path):
    np.savez(tmp_path / "gray.npz", x=np.zeros((20, 28, 28), np.float32), y=np.arange(20) % 2)
    tiny_config["data"] = {"source": "npz", "path": "gray.npz"}
    tiny_config["teacher"] = {"model": "torchvision:resnet18", "train": {"epochs": 1}}
    with pytest.raises(UsageError) as info:
        check_models(pipeline_without_model_check(tiny_config, tmp_path))
    assert "teacher.model: torchvision:resnet18 takes 3-channel images, the data (npz) has 1" in str(info.value)


def test_grayscale_with_torchvision_fails_validate_not_the_run(tiny_config, write_pipeline, capsys, tmp_path):
    pytest.importorskip("torchvision")
    gray_images(tmp_path / "images")
    tiny_config["data"] = {"source": "imagefolder", "path": "images", "grayscale": True, "image_size": 8}
    tiny_config["student"] = {"model": "torchvision:resnet18"}
    code, err = validate(tiny_config, write_pipeline, capsys)
    assert code == 2 and len(err) == 1 and "data.grayscale" in err[0] and "grayscale: false" in err[0], err


# --- a module beside pipeline.yaml ---------------------------------------------------------------

FACTORY = ("import torch\n\n\n"
           "def tiny(in_channels, num_classes, input_size, width=8):\n"
           "    return torch.nn.Sequential(torch.nn.Flatten(),\n"
           "                               torch.nn.Linear(in_channels * input_size * input_size, width),\n"
           "                               torch.nn.ReLU(), torch.nn.Linear(width, num_classes))\n")


def test_a_module_beside_the_pipeline_imports_without_pythonpath(tiny_config, write_pipeline, capsys, tmp_path):
    (tmp_path / "first_run_beside.py").write_text(FACTORY)
    tiny_config["student"] = {"model": "first_run_beside:tiny", "kwargs": {"width": 4}}
    assert str(tmp_path) not in os.environ.get("PYTHONPATH", "")
    code, err = validate(tiny_config, write_pipeline, capsys)
    assert code == 0, err
    assert sys.path[-1] == str(tmp_path.resolve())  # appended: the toolchain's own packages come first


def test_the_memory_child_imports_a_module_beside_the_pipeline(tmp_path, monkeypatch):
    from compress.measuring.footprint import measure_footprint

    (tmp_path / "first_run_child.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ModelSpec("first_run_child:tiny", 1, 3, 4)
    save_checkpoint(tmp_path / "m.pt", build_model(spec), spec)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    footprint = measure_footprint(tmp_path / "m.pt", "torch", (1, 4, 4), 2, threads=1)
    assert "error" not in footprint and footprint["peak_mb"] > 0, footprint


# --- teacher checkpoints -------------------------------------------------------------------------

SYSTEM = f"{os.system.__module__}.system"  # posix.system on Linux


@pytest.mark.parametrize("content, words", [
    (pickle.dumps(CallsSystem()), f"refused: the file asks to call {SYSTEM}"),
    (pickle.dumps(CallsSystem(), protocol=2), f"refused: the file asks to call {SYSTEM}"),
    (np.random.default_rng(0).bytes(2000), "not a checkpoint"),
    (b"", "not a checkpoint: the file is empty"),
])
def test_a_checkpoint_that_is_not_one_gets_the_real_reason_and_no_dangerous_advice(
        tiny_config, write_pipeline, capsys, tmp_path, content, words):
    (tmp_path / "teacher.pt").write_bytes(content)
    code, err = validate(with_checkpoint(tiny_config, tmp_path / "teacher.pt"), write_pipeline, capsys)
    assert code == 2 and len(err) == 1, err
    assert "pipeline.yaml: teacher.checkpoint: teacher.pt: " in err[0] and words in err[0], err
    assert "weights_only=False" not in err[0] and "weights_only` set to `False" not in err[0]


def test_a_code_payload_inside_a_torch_archive_is_named(tmp_path):
    from compress.models import CheckpointError, load_state_dict

    torch.save({"fc.weight": torch.zeros(2, 2), "hook": CallsSystem()}, tmp_path / "t.pt")
    with pytest.raises(CheckpointError) as info:
        load_state_dict(tmp_path / "t.pt")
    assert "refused: the file asks to call" in info.value.reason and ".system" in info.value.reason


def test_weights_that_do_not_fit_show_keys_and_shapes(tiny_config, write_pipeline, capsys, tmp_path):
    smaller = build_model(ModelSpec("cnn", 1, 10, 8, {"channels": [8, 16]}))
    torch.save(smaller.state_dict(), tmp_path / "shapes.pt")
    code, err = validate(with_checkpoint(tiny_config, tmp_path / "shapes.pt"), write_pipeline, capsys)
    assert code == 2 and len(err) == 1, err
    assert "teacher.checkpoint: shapes.pt does not match the config: its weights do not fit cnn" in err[0]
    assert "shape mismatches, checkpoint vs model (11): layers.0.weight [8, 1, 3, 3] vs [16, 1, 3, 3]" in err[0]
    assert "more)" in err[0]  # the first few, then a count

    torch.save(build_model(ModelSpec("mlp", 1, 10, 8)).state_dict(), tmp_path / "keys.pt")
    code, err = validate(with_checkpoint(tiny_config, tmp_path / "keys.pt"), write_pipeline, capsys)
    assert code == 2 and len(err) == 1, err
    assert "missing keys (" in err[0] and "): layers.0.weight, layers.1.weight, layers.1.bias" in err[0]
    assert "unexpected keys (2): features.1.weight, features.1.bias;" in err[0]
    assert "fc.weight [10, 128] vs [10, 32]" in err[0]


def test_a_checkpoint_that_fits_passes_validate(tiny_config, write_pipeline, capsys, tmp_path):
    save_checkpoint(tmp_path / "good.pt", build_model(DIGITS_CNN), DIGITS_CNN)
    torch.save(build_model(DIGITS_CNN).state_dict(), tmp_path / "bare.pt")
    for name in ("good.pt", "bare.pt"):
        code, err = validate(with_checkpoint(tiny_config, tmp_path / name), write_pipeline, capsys)
        assert code == 0, err


@pytest.mark.parametrize("spec, words", [
    (ModelSpec("cnn", 1, 10, 8, {"channels": [16, 32]}), "it holds a 'cnn', teacher.model is 'resnet8'"),
    (ModelSpec("resnet8", 1, 3, 8), "it is for 3 classes, the data has 10"),
    (ModelSpec("resnet8", 3, 10, 8), "it is for 3 input channels, the data has 1"),
    (ModelSpec("resnet8", 1, 10, 16), "it takes 16x16 inputs, the data is 8x8"),
])
def test_validate_refuses_a_teacher_checkpoint_that_disagrees_with_the_config(tiny_config, write_pipeline, capsys,
                                                                              tmp_path, spec, words):
    save_checkpoint(tmp_path / "teacher.pt", build_model(spec), spec)
    config = with_checkpoint(tiny_config, tmp_path / "teacher.pt")
    config["teacher"].update(model="resnet8", kwargs={})
    code, err = validate(config, write_pipeline, capsys)
    assert code == 2 and len(err) == 1, err
    assert "pipeline.yaml: teacher.checkpoint: teacher.pt does not match the config: " in err[0] and words in err[0]


def test_the_teacher_stage_refuses_a_checkpoint_for_other_classes_before_saving_anything(
        tiny_config, write_pipeline, capsys, tmp_path):
    """Classes of an image folder show only once it is read: the teacher stage checks them first thing."""
    gray_images(tmp_path / "images", per_class=4)
    spec = ModelSpec("cnn", 1, 10, 8, {"channels": [16, 32]})
    save_checkpoint(tmp_path / "teacher.pt", build_model(spec), spec)
    config = with_checkpoint(tiny_config, tmp_path / "teacher.pt")
    config["data"] = {"source": "imagefolder", "path": "images", "grayscale": True, "image_size": 8,
                      "val_fraction": 0.5}
    path = write_pipeline(config)
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "run"
    assert main(["--quiet", "run", str(path), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "teacher.checkpoint: teacher.pt does not match the config: " in err[0], err
    assert "it is for 10 classes, the data has 3" in err[0]
    assert not (run_dir / "stages" / "teacher" / "teacher.pt").exists()


# --- the console ---------------------------------------------------------------------------------

def test_global_options_work_after_the_subcommand(tiny_config, write_pipeline, capsys):
    parser = build_parser()
    after = parser.parse_args(["run", "p.yaml", "--quiet", "--debug"])
    assert after.quiet and after.debug
    before = parser.parse_args(["--quiet", "run", "p.yaml"])
    assert before.quiet and not getattr(before, "debug", False)
    path = write_pipeline(tiny_config)
    capsys.readouterr()
    assert main(["validate", str(path), "--quiet"]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("argv, words", [
    ([], "the following arguments are required: command (see compress --help)"),
    (["run"], "the following arguments are required: pipeline (see compress run --help)"),
    (["run", "p.yaml", "--bogus"], "unrecognized arguments: --bogus (see compress run --help)"),
    (["--quiet", "nosuch"], "argument command: invalid choice: 'nosuch'"),
    (["deploy", "runs/x"], "the following arguments are required: --target (see compress deploy --help)"),
    (["diagnose", "runs/x", "student.onnxruntime.int8", "--samples", "-5"],
     "argument --samples: must be >= 1, got -5 (see compress diagnose --help)"),
    (["diagnose", "runs/x", "student.onnxruntime.int8", "--samples", "many"],
     "argument --samples: 'many' is not a whole number"),
    (["deploy", "runs/x", "--target", "local:/tmp/x", "--val-samples", "0"],
     "argument --val-samples: must be >= 1, got 0 (see compress deploy --help)"),
])
def test_command_line_misuse_is_one_line_naming_the_help_and_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err


def test_unknown_field_lists_what_the_section_takes(tiny_config, write_pipeline, capsys):
    tiny_config["data"]["valid_path"] = "val"  # data.val_path is the field
    code, err = validate(tiny_config, write_pipeline, capsys)
    assert code == 2 and len(err) == 1
    assert "data.valid_path: unknown field valid_path; data takes: source, path, val_path, " in err[0]
    tiny_config["data"].pop("valid_path")
    tiny_config["stages"]["distill"]["temprature"] = 3
    code, err = validate(tiny_config, write_pipeline, capsys)
    assert "stages.distill.temprature: unknown field temprature; distill takes: " in err[0] and "temperature" in err[0]


def test_progress_lines_inside_an_epoch_off_a_terminal(monkeypatch):
    from compress.config import TrainConfig
    from compress.distill import train

    monkeypatch.setattr(train, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(train, "SHOW_PROGRESS", True)  # an earlier `compress run --quiet` in this process turns it off
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    lines: list[str] = []
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 1, 4, 4)).astype(np.float32), np.arange(40) % 2
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        train.fit(build_model(ModelSpec("mlp", 1, 2, 4)), ArraySplit(x, y), ArraySplit(x[:8], y[:8]),
                  TrainConfig(epochs=1, batch_size=8), Path(work), seed=0, log=lines.append)
    progress = [line for line in lines if "batches" in line]
    assert progress and progress[0].startswith("epoch 1/1: 1/5 batches (20%)"), lines


def test_library_warnings_go_to_the_run_log_not_the_console(tmp_path, capfd):
    log_path = tmp_path / "runs" / "x" / "run.log"
    with library_messages(log_path, debug=False):
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
        warnings.warn("pytree: register_constant() on Enum subclasses is deprecated", UserWarning)
    captured = capfd.readouterr()
    assert "CUDA_HOME" not in captured.err + captured.out and "pytree" not in captured.err + captured.out
    text = log_path.read_text()
    assert "torch.utils.cpp_extension: No CUDA runtime is found" in text and "pytree: register_constant()" in text
    logging.getLogger("torch.utils.cpp_extension").warning("after the run")  # torch's own handler is back
    assert "after the run" in capfd.readouterr().err


def test_the_run_log_lies_in_the_run_dir(tiny_config, write_pipeline, tmp_path):
    path = write_pipeline(tiny_config)
    args = build_parser().parse_args(["run", str(path)])
    assert run_log_path(args) == Path("runs") / "tiny" / "run.log"  # where cmd_run puts the run by default
    args = build_parser().parse_args(["run", str(path), "--run-dir", str(tmp_path / "r")])
    assert run_log_path(args) == tmp_path / "r" / "run.log"


def test_tensorrt_lint_findings_are_one_note_and_only_where_tensorrt_could_use_them(tiny_config, tmp_path):
    from compress.stages.tensorrt_checks import lint_note, tensorrt_could_use

    finding = {"clean": False, "findings": [{"message": "opset 21 is outside 9-20", "node": None, "fix": None}]}
    reports = {"student.onnx": finding, "student.qdq.onnx": finding, "student.fp16.onnx": {"clean": True}}
    note = lint_note(reports, "stages/export/trt_lint.json", could_use=True)
    assert note.startswith("note: student.onnx: TensorRT lint: opset 21") and "student.qdq.onnx" in note
    assert "warning" not in note and len(note.splitlines()) == 1
    assert lint_note(reports, "stages/export/trt_lint.json", could_use=False) is None

    tiny_config["stages"]["deploy"] = {"targets": ["local:/tmp/first-run-device"], "runtime": "tensorrt"}
    assert tensorrt_could_use(pipeline_without_model_check(tiny_config, tmp_path))
