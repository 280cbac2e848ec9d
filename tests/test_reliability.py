"""What a bad input, a bad run dir or a failing stage must not do: lose what was built, or end in a traceback."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from compress.cli import main
from compress.core.fileio import DirLock, read_json, write_json, write_text
from compress.models import ModelSpec, build_model

FAIL_AFTER_STEPS = "COMPRESS_TEST_FAIL_AFTER_STEPS"


class FailsInTraining(torch.nn.Module):
    """An MLP that raises at training step FAIL_AFTER_STEPS + 1 while that variable is set.

    A stage then fails at run time, after its first epoch is checkpointed, as one that runs out of
    memory or meets a NaN does; the variable is not part of the config, so the rerun has the same key.
    """

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.steps = 0

    def forward(self, x):
        if self.training:
            self.steps += 1
            limit = os.environ.get(FAIL_AFTER_STEPS)
            if limit and self.steps > int(limit):
                raise RuntimeError("out of memory (injected)")
        return self.inner(x)


def flaky_mlp(in_channels: int, num_classes: int, input_size: int, hidden: list[int]):
    return FailsInTraining(build_model(ModelSpec("mlp", in_channels, num_classes, input_size, {"hidden": hidden})))


def needs_16_pixels(in_channels: int, num_classes: int, input_size: int):
    """A factory that cannot take the digits' 8x8 images: only the data, not the config, shows it."""
    if input_size < 16:
        raise ValueError(f"needs images of at least 16x16 pixels, got {input_size}x{input_size}")
    return build_model(ModelSpec("mlp", in_channels, num_classes, input_size, {"hidden": [8]}))


def digits_npz(path: Path) -> Path:
    """The digits as an npz, with class 9 cut to 12 samples (3 of them validation samples)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    keep = np.flatnonzero(bunch.target != 9).tolist() + np.flatnonzero(bunch.target == 9)[:12].tolist()
    x, y = (bunch.images[keep] / 16.0).astype(np.float32), bunch.target[keep].astype(np.int64)
    np.savez(path, x=x, y=y)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (but the lock, which records the last pid) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def run(config: dict, folder: Path, run_dir: Path, quiet: bool = True) -> int:
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return main([*(["--quiet"] if quiet else []), "run", str(path), "--run-dir", str(run_dir)])


def error_line(capsys) -> str:
    """The one line a refused command prints: no traceback, nothing else on stderr."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (teacher, baseline, distill ... report) on an npz; each test works on a copy of it."""
    from conftest import TINY

    work = tmp_path_factory.mktemp("finished")
    config = copy.deepcopy(TINY)
    config["data"] = {"source": "npz", "path": str(digits_npz(work / "digits.npz")), "val_fraction": 0.25}
    config["teacher"]["train"]["epochs"] = 2
    config["stages"]["distill"]["epochs"] = 2
    config["stages"]["baseline"] = {}
    umask = os.umask(0o022)
    try:
        path = work / "pipeline.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["run", str(path), "--run-dir", str(work / "run")]) == 0
    finally:
        os.umask(umask)
    return work / "run", config, out.getvalue().splitlines()


@pytest.fixture
def copy_of_finished(finished, tmp_path):
    run_dir, config, _ = finished
    shutil.copytree(run_dir, tmp_path / "run", symlinks=True)
    return tmp_path / "run", copy.deepcopy(config)


# A bad input found at run time, or a stage that fails, loses nothing already built.

def test_an_npz_without_y_leaves_the_finished_run_as_it_was(copy_of_finished, tmp_path, capsys):
    run_dir, config = copy_of_finished
    before = snapshot(run_dir)
    np.savez(tmp_path / "no_y.npz", x=np.zeros((20, 8, 8), np.float32))
    config["data"]["path"] = str(tmp_path / "no_y.npz")
    assert run(config, tmp_path, run_dir) == 2
    assert "no_y.npz: npz needs arrays 'x' and 'y', missing y" in error_line(capsys)
    assert snapshot(run_dir) == before  # teacher, baseline and the rest byte for byte; run.json too


@pytest.mark.parametrize("layout, damage, words", [
    ("N,H,W", lambda x: x.fill(np.nan), "x: sample 0 holds NaN ({n} of {n} samples hold NaN or inf)"),
    ("N,C,H,W", lambda x: x.__setitem__((1500, 3, 5), np.inf), "x: sample 1500 holds inf (1 of {n} samples"),
])
def test_an_npz_with_nan_or_inf_leaves_the_finished_run_as_it_was(copy_of_finished, tmp_path, capsys, monkeypatch,
                                                                  layout, damage, words):
    from compress.data import sources

    run_dir, config = copy_of_finished
    before = snapshot(run_dir)
    with np.load(config["data"]["path"]) as arrays:
        x, y = arrays["x"].copy(), arrays["y"]
    damage(x)
    np.savez(tmp_path / "bad.npz", x=x if layout == "N,H,W" else x[:, None], y=y)  # N,C,H,W is memory-mapped
    monkeypatch.setattr(sources, "FINITE_CHUNK_BYTES", 100 * x[0].nbytes)  # read in chunks of 100 samples
    config["data"]["path"] = str(tmp_path / "bad.npz")
    assert run(config, tmp_path, run_dir) == 2
    assert f"{tmp_path / 'bad.npz'}: {words.format(n=format(len(y), ','))}" in error_line(capsys)
    assert snapshot(run_dir) == before  # no stage retrained on NaN


def nan_arrays():
    """What a data function may return: arrays, one sample of them NaN."""
    x, y = np.zeros((40, 8, 8), np.float32), np.arange(40) % 4
    x[3, 2, 2] = np.nan
    return x, y


def test_nan_in_a_data_functions_arrays_is_refused(tiny_config, write_pipeline, tmp_path, capsys):
    tiny_config["data"] = {"source": "tests.test_reliability:nan_arrays"}
    assert main(["--quiet", "run", str(write_pipeline(tiny_config)), "--run-dir", str(tmp_path / "run")]) == 2
    assert "data source 'tests.test_reliability:nan_arrays': x: sample 3 holds NaN (1 of 40 samples hold NaN or " \
           "inf); fix or drop them" in error_line(capsys)
    assert not (tmp_path / "run" / "stages").exists()


def write_texts(path: Path, topics: tuple[str, ...]) -> Path:
    rows = [f"the {topic} story number {i},{topic}" for i in range(30) for topic in topics]
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("damage, words", [
    (lambda path: write_texts(path, ("sport",)), "{path}: label: only class 'sport'; a classifier needs at least "
                                                 "two classes"),
    (lambda path: path.write_bytes(write_texts(path, ("sport", "money")).read_bytes()
                                   + "café,sport\n".encode("latin-1")),
     "{path}:62: not UTF-8 text (byte 0xe9); save the file as UTF-8"),
    (lambda path: path.write_bytes(np.random.default_rng(0).bytes(4096)), "not UTF-8 text (byte 0x"),
    (lambda path: path.write_text(f'text,label\nfine,a\n"{"word " * 30_000}",b\n'),
     "{path}:3: field larger than field limit"),
])
def test_a_text_file_with_one_class_or_not_utf8_leaves_the_finished_run_as_it_was(copy_of_finished, tmp_path,
                                                                                   capsys, damage, words):
    run_dir, config = copy_of_finished
    before = snapshot(run_dir)
    damage(tmp_path / "train.csv")
    config["data"] = {"source": "text", "path": str(tmp_path / "train.csv"), "text": {"max_length": 16}}
    config["teacher"]["model"] = config["student"]["model"] = "hf-config:bert"
    config["teacher"]["kwargs"] = config["student"]["kwargs"] = {"layers": 1, "hidden": 16, "heads": 2}
    assert run(config, tmp_path, run_dir) == 2
    line = error_line(capsys)
    assert f"{tmp_path / 'train.csv'}:" in line and words.format(path=tmp_path / "train.csv") in line
    assert main(["--quiet", "validate", str(tmp_path / "pipeline.yaml")]) == 2  # validate said "ok (1 classes)"
    assert error_line(capsys) == line
    assert snapshot(run_dir) == before


def test_a_typo_in_student_kwargs_leaves_the_finished_run_as_it_was(copy_of_finished, tmp_path, capsys):
    run_dir, config = copy_of_finished
    before = snapshot(run_dir)
    config["student"]["kwargs"] = {"hiden": [32]}
    assert run(config, tmp_path, run_dir) == 2
    assert "student.kwargs" in error_line(capsys)
    assert snapshot(run_dir) == before


def test_a_model_that_cannot_take_the_data_is_refused_before_anything_is_written(copy_of_finished, tmp_path,
                                                                                  capsys):
    run_dir, config = copy_of_finished
    before = snapshot(run_dir)
    config["student"] = {"model": "tests.test_reliability:needs_16_pixels"}
    assert run(config, tmp_path, run_dir) == 2
    line = error_line(capsys)
    assert "student.model: 'tests.test_reliability:needs_16_pixels' cannot be built for this data (1x8x8, 10 " \
           "classes): needs images of at least 16x16 pixels" in line
    assert snapshot(run_dir) == before


def fail_in_baseline(run_dir: Path, config: dict, tmp_path: Path, monkeypatch, capsys) -> dict:
    """Run a new student whose training fails in its second epoch; return the baseline's outputs before."""
    kept = {name: snapshot(run_dir / "stages" / name) for name in ("teacher", "baseline")}
    config["student"] = {"model": "tests.test_reliability:flaky_mlp", "kwargs": {"hidden": [32]}}
    monkeypatch.setenv(FAIL_AFTER_STEPS, "25")  # 19 steps an epoch: epoch 1 is checkpointed
    assert run(config, tmp_path, run_dir, quiet=False) == 1
    captured = capsys.readouterr()
    assert "stage baseline failed: RuntimeError: out of memory (injected)" in captured.err
    assert "[baseline] stages/baseline is kept as it was; this attempt stays in stages/.baseline.new" in captured.out
    monkeypatch.delenv(FAIL_AFTER_STEPS)
    for name, files in kept.items():
        assert snapshot(run_dir / "stages" / name) == files
    assert read_json(run_dir / "run.json")["stages"]["baseline"]["status"] == "failed"
    assert (run_dir / "stages" / ".baseline.new" / "last.pt").is_file()
    return kept


def test_a_stage_that_fails_keeps_the_finished_folder_and_its_rerun_resumes_beside_it(copy_of_finished, tmp_path,
                                                                                      monkeypatch, capsys):
    run_dir, config = copy_of_finished
    fail_in_baseline(run_dir, config, tmp_path, monkeypatch, capsys)

    assert run(config, tmp_path, run_dir, quiet=False) == 0
    out = capsys.readouterr().out
    assert "[teacher] cached" in out and "[baseline] resuming from epoch 1/2" in out
    assert not (run_dir / "stages" / ".baseline.new").exists()
    entry = read_json(run_dir / "run.json")["stages"]["baseline"]
    assert entry["status"] == "done" and entry["outputs"]["checkpoint"] == "stages/baseline/student.pt"
    assert entry["outputs"]["metrics"] == "stages/baseline/metrics.jsonl"
    assert read_json(run_dir / "stages" / "baseline" / "stage.json")["outputs"] == entry["outputs"]
    spec = torch.load(run_dir / "stages" / "baseline" / "student.pt", weights_only=True)["model"]
    assert spec["name"] == "tests.test_reliability:flaky_mlp"
    for name in ("distill", "export", "build", "benchmark", "report"):  # built beside, then moved into place
        assert f"[{name}] running" in out and not (run_dir / "stages" / f".{name}.new").exists()
        assert all(not str(v).startswith(f"stages/.{name}") for v in _strings(read_json(run_dir / "run.json")))


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_going_back_after_a_failed_attempt_reuses_the_kept_folder(copy_of_finished, finished, tmp_path,
                                                                  monkeypatch, capsys):
    run_dir, config = copy_of_finished
    original = copy.deepcopy(config)
    kept = fail_in_baseline(run_dir, config, tmp_path, monkeypatch, capsys)

    assert run(original, tmp_path, run_dir, quiet=False) == 0
    out = capsys.readouterr().out
    assert all(f"[{name}] cached" in out for name in read_json(finished[0] / "run.json")["stages"])
    assert snapshot(run_dir / "stages" / "baseline") == kept["baseline"]
    assert read_json(run_dir / "run.json")["stages"] == read_json(finished[0] / "run.json")["stages"]
    assert not (run_dir / "stages" / ".baseline.new").exists()  # no record can resume that attempt now


# A run dir or a pipeline file that cannot be used: one line, exit 2.

def a_file(tmp_path: Path) -> Path:
    (tmp_path / "notes.txt").write_text("not a folder\n")
    return tmp_path / "notes.txt"


@pytest.mark.parametrize("run_dir_of, words", [
    (lambda tmp: a_file(tmp), "--run-dir {tmp}/notes.txt: is a file, not a folder"),
    (lambda tmp: a_file(tmp) / "run", "--run-dir {tmp}/notes.txt/run: lies under {tmp}/notes.txt, which is a file, "
                                      "not a folder"),
    (lambda tmp: Path("/proc/compress-run"), "--run-dir /proc/compress-run: lies under /proc, a kernel file system"),
    (lambda tmp: Path("/proc/self"), "--run-dir /proc/self: lies under /proc"),
])
def test_a_run_dir_that_cannot_be_one_is_refused_in_one_line(tiny_config, write_pipeline, tmp_path, capsys,
                                                             run_dir_of, words):
    run_dir = run_dir_of(tmp_path)
    assert main(["--quiet", "run", str(write_pipeline(tiny_config)), "--run-dir", str(run_dir)]) == 2
    assert words.format(tmp=tmp_path) in error_line(capsys)


@contextlib.contextmanager
def immutable(folder: Path):
    """chattr +i: not even root can add a file (root ignores the permission bits, not this)."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not allowed here: {made.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_run_dir_that_cannot_be_written_is_refused_in_one_line(tiny_config, write_pipeline, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = write_pipeline(tiny_config)
    with immutable(run_dir):
        assert main(["--quiet", "run", str(path), "--run-dir", str(run_dir)]) == 2
    assert f"--run-dir {run_dir}: cannot write files in this folder: Operation not permitted" in error_line(capsys)
    assert list(run_dir.iterdir()) == []


def test_report_on_a_run_dir_it_cannot_write_is_refused_in_one_line(copy_of_finished, capsys):
    run_dir, _ = copy_of_finished
    with immutable(run_dir):
        assert main(["--quiet", "report", str(run_dir)]) == 2
    assert f"{run_dir}: cannot write files in this folder" in error_line(capsys)


def test_a_name_longer_than_a_folder_name_can_be_is_refused_by_validate(tiny_config, write_pipeline, capsys):
    tiny_config["name"] = "n" * 251
    assert main(["validate", str(write_pipeline(tiny_config))]) == 2
    assert "pipeline.yaml: name: 251 bytes long; at most 250" in error_line(capsys)
    tiny_config["name"] = "n" * 250
    assert main(["validate", str(write_pipeline(tiny_config))]) == 0


def test_a_pipeline_file_that_is_not_utf8_is_refused_in_one_line(tiny_config, tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    text = yaml.safe_dump(tiny_config, sort_keys=False).replace("name: tiny", "name: tiny  # café")
    path.write_bytes(text.encode("latin-1"))  # as an editor set to Latin-1 saves it
    assert main(["validate", str(path)]) == 2
    assert f"{path}: line 1: not UTF-8 text (byte 0xe9); save the file as UTF-8" in error_line(capsys)


# A bad file in the data is named: exit 2, not a stage failure.

def image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 6) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("damage", [
    lambda png: png.write_bytes(b"this is not a png"),
    lambda png: png.write_bytes(png.read_bytes()[:40]),  # truncated
])
def test_a_corrupt_image_is_named(tiny_config, write_pipeline, tmp_path, capsys, damage):
    folder = image_folder(tmp_path / "images")
    damage(folder / "dog" / "3.png")
    tiny_config["data"] = {"source": "imagefolder", "path": str(folder), "grayscale": True}
    assert main(["--quiet", "run", str(write_pipeline(tiny_config)), "--run-dir", str(tmp_path / "run")]) == 2
    line = error_line(capsys)
    assert f"{folder / 'dog' / '3.png'}: not a readable image (" in line and "fix or remove it" in line


def test_a_negative_label_is_named_with_its_file(tiny_config, write_pipeline, tmp_path, capsys):
    y = np.arange(40) % 4
    y[7] = -1
    np.savez(tmp_path / "labels.npz", x=np.zeros((40, 8, 8), np.float32), y=y)
    tiny_config["data"] = {"source": "npz", "path": str(tmp_path / "labels.npz")}
    assert main(["--quiet", "run", str(write_pipeline(tiny_config)), "--run-dir", str(tmp_path / "run")]) == 2
    assert f"{tmp_path / 'labels.npz'}: y: label -1 is negative" in error_line(capsys)


# One class is refused; a class with few validation samples is warned about.

def test_data_with_one_class_is_refused(tiny_config, write_pipeline, tmp_path, capsys):
    np.savez(tmp_path / "one.npz", x=np.zeros((40, 8, 8), np.float32), y=np.zeros(40, np.int64))
    tiny_config["data"] = {"source": "npz", "path": str(tmp_path / "one.npz")}
    assert main(["--quiet", "run", str(write_pipeline(tiny_config)), "--run-dir", str(tmp_path / "run")]) == 2
    assert (f"{tmp_path / 'one.npz'}: y: only class '0'; a classifier needs at least two classes"
            in error_line(capsys))

    tiny_config["data"] = {"source": "imagefolder", "grayscale": True,
                           "path": str(image_folder(tmp_path / "images", classes=("cat",)))}
    assert main(["--quiet", "run", str(write_pipeline(tiny_config)), "--run-dir", str(tmp_path / "run")]) == 2
    assert f"{tmp_path / 'images'}: class folders: only class 'cat'" in error_line(capsys)
    assert not (tmp_path / "run" / "stages").exists()


def test_a_class_with_few_validation_samples_is_warned_about(finished):
    _, _, lines = finished
    warnings = [line for line in lines if line.startswith("[data] warning:")]
    assert warnings == ["[data] warning: 1 class(es) with fewer than 5 validation samples ('9' 3): their accuracy "
                        "is noise; add samples or raise data.val_fraction"]


# `compress report` during a run; the modes of written files.

def test_report_while_a_run_holds_the_lock_says_a_run_is_in_progress(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "pipeline.yaml").write_text("name: tiny\n")  # as a run leaves it before its benchmark has run
    lock = DirLock(run_dir)
    assert lock.acquire()
    try:
        assert main(["--quiet", "report", str(run_dir)]) == 2
    finally:
        lock.release()
    line = error_line(capsys)
    assert f"{run_dir}: a run (pid {os.getpid()}) is in progress in this run dir" in line
    assert "benchmark stage first" not in line


def test_files_written_atomically_respect_the_umask(finished, tmp_path):
    run_dir, _, _ = finished  # written under umask 022
    for path in ("run.json", "pipeline.yaml", "stages/teacher/teacher.pt", "stages/teacher/stage.json", "report.md"):
        assert (run_dir / path).stat().st_mode & 0o777 == 0o644, path
    umask = os.umask(0o027)
    try:
        write_json(tmp_path / "new.json", {})
        (tmp_path / "mine.txt").write_text("")
        os.chmod(tmp_path / "mine.txt", 0o600)
        write_text(tmp_path / "mine.txt", "rewritten")
    finally:
        os.umask(umask)
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "mine.txt").stat().st_mode & 0o777 == 0o600  # a file's own mode is kept, as open() keeps it
