"""examples/imagefolder: its image maker writes a seeded ImageFolder, and its pipeline validates against it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from compress.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "imagefolder"
CLASSES = ["blurred", "flower", "sepia", "striped", "temple"]

pytest.importorskip("timm")


def make_images(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLE / "make_images.py"), "--out", str(out), *extra],
                          capture_output=True, text=True, check=True)


def test_make_images_writes_seeded_rgb_jpegs_in_train_and_val(tmp_path):
    make_images(tmp_path / "a", "--per-class", "4")
    make_images(tmp_path / "b", "--per-class", "4")
    for split, count in (("train", 4), ("val", 1)):
        assert sorted(p.name for p in (tmp_path / "a" / split).iterdir()) == CLASSES
        for name in CLASSES:
            files = sorted((tmp_path / "a" / split / name).glob("*.jpg"))
            assert len(files) == count
            with Image.open(files[0]) as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (96, 96))
    first = Path("train") / "striped" / "striped_0000.jpg"
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()
    make_images(tmp_path / "c", "--per-class", "4", "--seed", "1")
    assert (tmp_path / "a" / first).read_bytes() != (tmp_path / "c" / first).read_bytes()


def test_a_rerun_with_fewer_images_leaves_no_stale_files(tmp_path):
    make_images(tmp_path, "--per-class", "4")
    make_images(tmp_path, "--per-class", "2")
    assert len(list((tmp_path / "train" / "temple").glob("*.jpg"))) == 2


def test_the_example_pipeline_validates_beside_its_images(tmp_path, capsys):
    """The pipeline as shipped, copied next to a tiny image set: its relative paths find the folders."""
    make_images(tmp_path / "images", "--per-class", "4")
    pipeline = tmp_path / "pipeline.yaml"
    shutil.copy(EXAMPLE / "pipeline.yaml", pipeline)
    capsys.readouterr()
    assert main(["validate", str(pipeline)]) == 0
    said = capsys.readouterr().out
    assert "ok (stages: teacher, baseline, distill, export, build, benchmark, report)" in said
    assert "imagefolder, 25 files" in said
    assert "samples per class (5 classes): blurred 4, flower 4, sepia 4, striped 4, temple 4" in said


def test_the_example_pipeline_without_images_names_the_missing_folder(tmp_path, capsys):
    pipeline = tmp_path / "pipeline.yaml"
    shutil.copy(EXAMPLE / "pipeline.yaml", pipeline)
    capsys.readouterr()
    assert main(["validate", str(pipeline)]) == 2
    assert "images/train" in capsys.readouterr().err
