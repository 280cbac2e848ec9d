"""Cache keys see the data files: an image added or an npz rewritten reruns what reads the data."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from compress.cli import main
from compress.runner import Runner, load_pipeline

ROOT = Path(__file__).resolve().parents[1]


def image_folder(root: Path, per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def keys_of(pipeline: Path, run_dir: Path) -> dict[str, str]:
    runner = Runner(load_pipeline(pipeline), run_dir)
    keys: dict[str, str] = {}
    for name in runner.stage_names:
        keys[name] = runner.stage_key(name, keys)
    return keys


def write(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_an_image_added_or_replaced_changes_the_keys_of_the_stages(tiny_config, tmp_path):
    config = copy.deepcopy(tiny_config)
    config["data"] = {"source": "imagefolder", "path": "images", "grayscale": True, "val_fraction": 0.34}
    folder = image_folder(tmp_path / "images")
    pipeline = write(config, tmp_path / "pipeline.yaml")
    before = keys_of(pipeline, tmp_path / "run")
    assert keys_of(pipeline, tmp_path / "run") == before  # the same files: the same keys

    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / "dog" / "new.png")
    added = keys_of(pipeline, tmp_path / "run")
    assert {name for name in before if added[name] != before[name]} == set(before)  # report through upstream

    stat = (folder / "cat" / "0.png").stat()
    Image.fromarray(np.full((8, 8), 7, dtype=np.uint8)).save(folder / "cat" / "0.png")
    os.utime(folder / "cat" / "0.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert keys_of(pipeline, tmp_path / "run")["teacher"] != added["teacher"]


def test_an_npz_rewritten_reruns_the_teacher_and_validate_prints_the_fingerprint(tiny_config, tmp_path, capsys):
    config = copy.deepcopy(tiny_config)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((40, 1, 8, 8)).astype(np.float32),
             y=np.repeat(np.arange(4), 10))
    config["data"] = {"source": "npz", "path": "data.npz"}
    pipeline = write(config, tmp_path / "pipeline.yaml")
    before = keys_of(pipeline, tmp_path / "run")["teacher"]
    assert main(["validate", str(pipeline)]) == 0
    out = capsys.readouterr().out
    assert "data: npz, 1 files, fingerprint " in out
    assert "samples per class (4 classes): 0 10, 1 10, 2 10, 3 10" in out

    np.savez(tmp_path / "data.npz", x=rng.standard_normal((44, 1, 8, 8)).astype(np.float32),
             y=np.repeat(np.arange(4), 11))
    assert keys_of(pipeline, tmp_path / "run")["teacher"] != before


def test_a_source_without_files_keeps_the_keys_run_dirs_were_made_with():
    """digits names no file: its keys are those of the code before fingerprints (a made run dir stays cached)."""
    keys = keys_of(ROOT / "examples" / "digits" / "pipeline.yaml", ROOT / "runs" / "digits")
    assert keys["teacher"] == "ea388f763fde6ca1" and keys["distill"] == "dcb8c426e648a0a5"
