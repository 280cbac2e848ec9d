"""The device classifies raw image files with Pillow and numpy alone, computing the host's eval tensors.

The host's evaluation steps (compress.data.transforms.eval_transform, torchvision on PIL images)
are the reference: deploy/runner/preprocess.py must give the same tensor on the same file, for
every mode a file may be in and every geometry eval_spec records. The runner is then run as the
device runs it, a subprocess on a release folder holding a small ONNX model and the bundle's
device files, on real JPEG and PNG files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from compress.core.fileio import write_json
from compress.data.transforms import eval_transform
from deploy.runner import RUNNER_DIR, RUNNER_FILES
from deploy.runner.preprocess import preprocess_images
from deploy.runner.runner import RunnerError

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# JetPack 5's Python 3.8 with numpy and onnxruntime (.ci/run names it, as for test_deploy).
DEVICE_PYTHON = os.environ.get("COMPRESS_TEST_DEVICE_PYTHON")
SPECS = {
    "square resize": {"mode": "RGB", "resize": [24, 24], "crop": None, "interpolation": "bilinear", "size": [24, 24]},
    "shorter side + crop": {"mode": "RGB", "resize": 32, "crop": [28, 28], "interpolation": "bilinear",
                            "size": [28, 28]},
    "crop larger than the image": {"mode": "RGB", "resize": 20, "crop": [24, 24], "interpolation": "bilinear",
                                   "size": [24, 24]},
    "no resize, odd crop": {"mode": "RGB", "resize": None, "crop": [40, 31], "interpolation": "bilinear",
                            "size": [40, 31]},
    "L, shorter side + crop": {"mode": "L", "resize": 36, "crop": [32, 32], "interpolation": "bilinear",
                               "size": [32, 32]},
    "L, non-square resize": {"mode": "L", "resize": [7, 300], "crop": None, "interpolation": "bilinear",
                             "size": [7, 300]},
}
SIZES = [(37, 53), (300, 200), (16, 16), (5, 9), (64, 17)]  # (w, h)


def save_images(folder: Path) -> list[Path]:
    """Noisy images in every mode a file comes in (RGB, L, RGBA, palette), as PNG and (where it can) JPEG."""
    rng = np.random.default_rng(0)
    files = []
    for width, height in SIZES:
        rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        modes = {"RGB": rgb, "L": rgb.convert("L"), "RGBA": rgb.convert("RGBA"), "P": rgb.quantize(64)}
        for mode, image in modes.items():
            for suffix in (".png", ".jpg") if mode in ("RGB", "L") else (".png",):
                path = folder / f"{width}x{height}-{mode}{suffix}"
                image.save(path)
                files.append(path)
    return files


def manifest_of(spec: dict | None, channels: int = 3) -> dict:
    pre = {"layout": "NCHW", "dtype": "float32", "mean": MEAN[:channels], "std": STD[:channels]}
    if spec is not None:
        pre["image"] = spec
    return {"preprocessing": pre, "input": {"name": "input", "shape": [-1, channels, 16, 16]}}


def host_tensors(files: list[Path], spec: dict, channels: int) -> np.ndarray:
    transform = eval_transform(spec, MEAN[:channels], STD[:channels])
    return np.stack([transform(Image.open(path)).numpy() for path in files])


# ---------------------------------------------------------------- parity with the host


@pytest.mark.parametrize("name", list(SPECS))
def test_device_preprocessing_of_image_files_is_the_hosts(name, tmp_path):
    spec = SPECS[name]
    channels = 1 if spec["mode"] == "L" else 3
    files = save_images(tmp_path)
    device = preprocess_images(files, manifest_of(spec, channels))
    host = host_tensors(files, spec, channels)
    assert device.dtype == np.float32 and device.shape == (len(files), channels, *spec["size"])
    assert device.shape == host.shape
    assert float(np.abs(device - host).max()) <= 1e-5


def test_device_refuses_images_of_another_size_when_the_bundle_resizes_none(tmp_path):
    spec = {"mode": "RGB", "resize": None, "crop": None, "interpolation": "bilinear", "size": [16, 16]}
    Image.new("RGB", (16, 16), (10, 20, 30)).save(tmp_path / "fits.png")
    Image.new("RGB", (20, 16), (10, 20, 30)).save(tmp_path / "wide.png")
    assert preprocess_images([tmp_path / "fits.png"], manifest_of(spec)).shape == (1, 3, 16, 16)
    with pytest.raises(RunnerError, match=r"wide\.png: 20x16 pixels where the model takes 16x16 \(this bundle "
                                          r"resizes none"):
        preprocess_images([tmp_path / "fits.png", tmp_path / "wide.png"], manifest_of(spec))


def test_device_refuses_an_interpolation_it_does_not_repeat(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    spec = {**SPECS["square resize"], "interpolation": "bicubic"}
    with pytest.raises(RunnerError, match="preprocessing.image.interpolation: bicubic is not one this runner repeats"):
        preprocess_images([tmp_path / "a.png"], manifest_of(spec))


# ---------------------------------------------------------------- the runner on a release folder

SPEC = {"mode": "RGB", "resize": 20, "crop": [16, 16], "interpolation": "bilinear", "size": [16, 16]}
LABELS = ["cat", "dog", "bird"]


def tiny_model(path: Path) -> None:
    """Conv 3->4 (3x3) -> ReLU -> global average -> Gemm 4->3, batch dynamic, seeded weights."""
    rng = np.random.default_rng(1)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("conv_w", (4, 3, 3, 3)), ("conv_b", (4,)), ("fc_w", (3, 4)), ("fc_b", (3,)))]
    nodes = [helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])]
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what the device's older ONNX Runtime reads too
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_release(folder: Path, spec: dict | None) -> Path:
    """A release folder as the device holds one: the device files, the model and the manifest keys infer reads."""
    folder.mkdir()
    for name in RUNNER_FILES:
        shutil.copyfile(RUNNER_DIR / name, folder / name)
    tiny_model(folder / "model.onnx")
    write_json(folder / "manifest.json", {**manifest_of(spec), "runtime": "onnxruntime", "precision": "fp32",
                                          "model_file": "model.onnx", "engine": None, "labels": LABELS})
    return folder


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("device") / "image-release", SPEC)


@pytest.fixture(scope="module")
def array_release(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("device") / "array-release", None)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """A JPEG and PNGs of other sizes and modes: colour gradients, so the model's classes differ."""
    folder = tmp_path_factory.mktemp("photos")
    y, x = np.mgrid[0:120, 0:90]
    files = []
    for index, (name, size, mode) in enumerate([("a.jpg", (90, 120), "RGB"), ("b.png", (53, 37), "RGBA"),
                                                  ("c.png", (300, 200), "P"), ("d.JPEG", (40, 40), "L")]):
        rgb = np.stack([(x * (3 + index)) % 256, (y * (5 - index)) % 256, (x + y) * index % 256], -1)
        image = Image.fromarray(rgb.astype(np.uint8)).resize(size)
        image = image.quantize(32) if mode == "P" else image.convert(mode)
        image.save(folder / name)
        files.append(folder / name)
    return files


def run_runner(python: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    release_dir = Path(args[0])
    done = subprocess.run([python, str(release_dir / "runner.py"), "infer", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert not list(release_dir.rglob("__pycache__"))  # a release holds exactly its manifest's files
    return done


def answers(done: subprocess.CompletedProcess) -> list[dict]:
    """What `runner.py infer` printed: one JSON line per input, nothing else on stdout."""
    return [json.loads(line) for line in done.stdout.strip().splitlines()]


def host_logits(release_dir: Path, files: list[Path]) -> np.ndarray:
    import onnxruntime as ort

    x = host_tensors(files, SPEC, 3)
    session = ort.InferenceSession(str(release_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def has_pillow(python: str) -> bool:
    return subprocess.run([python, "-c", "import PIL"], capture_output=True).returncode == 0


def pythons(needs_pillow: bool) -> list:
    """The host's interpreter, and the device's Python 3.8 where it is named (and has Pillow, if that is needed)."""
    reason = "COMPRESS_TEST_DEVICE_PYTHON not set (.ci/run sets it)"
    if DEVICE_PYTHON:
        reason = f"Pillow is not installed in {DEVICE_PYTHON}" if needs_pillow and not has_pillow(DEVICE_PYTHON) else ""
    device = pytest.param(DEVICE_PYTHON, id="device-python-3.8", marks=pytest.mark.skipif(bool(reason), reason=reason))
    return [pytest.param(sys.executable, id="host-python"), device]


@pytest.mark.parametrize("python", pythons(needs_pillow=True))
def test_runner_classifies_image_files_as_the_host_would(python, release, photos, tmp_path):
    out = tmp_path / "logits.npy"
    done = run_runner(python, release, *photos, "--output", out)
    assert done.returncode == 0, done.stdout + done.stderr
    result = answers(done)  # one JSON line per file, in the order given
    expected = host_logits(release, photos)
    probabilities = np.exp(expected - expected.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    assert all(set(p) == {"file", "label", "score"} for p in result)
    assert [p["file"] for p in result] == [str(f) for f in photos]
    assert [p["label"] for p in result] == [LABELS[i] for i in expected.argmax(1)]
    assert len({p["label"] for p in result}) > 1  # the files are told apart, not all one class
    assert np.allclose([p["score"] for p in result], probabilities.max(1), atol=1e-5)
    assert np.abs(np.load(out) - expected).max() <= 1e-4


@pytest.mark.parametrize("python", pythons(needs_pillow=False))
def test_runner_still_classifies_one_npy_of_raw_inputs(python, release, tmp_path):
    import onnxruntime as ort

    raw = np.random.default_rng(2).random((5, 3, 16, 16), dtype=np.float32)
    np.save(tmp_path / "raw.npy", raw)
    done = run_runner(python, release, tmp_path / "raw.npy")
    assert done.returncode == 0, done.stdout + done.stderr
    x = (raw - np.float32(MEAN)[None, :, None, None]) / np.float32(STD)[None, :, None, None]
    session = ort.InferenceSession(str(release / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": x})[0].argmax(1)
    result = answers(done)  # one JSON line per row of the .npy
    assert [(p["file"], p["index"], p["label"]) for p in result] == [
        (str(tmp_path / "raw.npy"), i, LABELS[label]) for i, label in enumerate(expected)]
    assert all(0 < p["score"] <= 1 for p in result)


# ---------------------------------------------------------------- bad inputs: one line, naming the file


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0])["error"]


def test_runner_refuses_files_that_are_not_images_naming_them(release, photos, tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture\n")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(photos[0].read_bytes()[:len(photos[0].read_bytes()) // 2])
    for bad in (tmp_path / "notes.jpg", truncated):
        error = one_line_error(run_runner(sys.executable, release, photos[1], bad))
        assert error.startswith(f"{bad}: not a readable image"), error
    error = one_line_error(run_runner(sys.executable, release, tmp_path / "missing.png"))
    assert error == f"{tmp_path / 'missing.png'}: not found"


def test_runner_refuses_inputs_it_cannot_take(release, photos, tmp_path):
    (tmp_path / "x.txt").write_text("1 2 3\n")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 16, 16), np.float32))
    error = one_line_error(run_runner(sys.executable, release, photos[0], tmp_path / "x.txt"))
    assert error.startswith(f"{tmp_path / 'x.txt'}: not an input the runner takes (one .npy, or image files: .png")
    error = one_line_error(run_runner(sys.executable, release, photos[0], tmp_path / "x.npy"))
    assert error == f"{tmp_path / 'x.npy'}: give one .npy alone, or image files only"
    error = one_line_error(run_runner(sys.executable, release, photos[0], "--preprocessed"))
    assert error.startswith(f"{photos[0]}: --preprocessed applies to a .npy")


def test_a_bundle_made_from_arrays_says_it_takes_npy(array_release, photos):
    error = one_line_error(run_runner(sys.executable, array_release, *photos[:2]))
    assert "this bundle was made from array data, not images: give it a .npy" in error


@pytest.mark.parametrize("python", pythons(needs_pillow=False))
def test_a_device_without_pillow_says_so_in_one_line(release, photos, python, tmp_path):
    hidden = tmp_path / "no-pillow" / "PIL"  # shadows the installed Pillow, as on a device without it
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('No module named PIL')\n")
    env = {**os.environ, "PYTHONPATH": str(hidden.parent)}
    error = one_line_error(run_runner(python, release, photos[0], env=env))
    assert error.startswith("Pillow is not installed on this device (pip install Pillow)")
