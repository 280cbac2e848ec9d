"""The streaming data pipeline end to end: image files -> load_dataset -> fit, and bad files through `compress run`.

Every data set is made with Pillow in tmp_path (3 classes of small JPEG and PNG images of 12..20
pixels). What is checked is what a user relies on: labels numbered alike in every split, eval
tensors equal to the recorded preprocessing, seeded splits and augmentation (a resumed run ends
with the weights of an uninterrupted one), no pixels held by a split, the teacher-output cache on
disk, and a bad file named in one line before anything trains.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from compress.cli import main
from compress.config import DataConfig, TrainConfig
from compress.data import load_dataset
from compress.data.splits import StreamSplit
from compress.data.transforms import batch_mixer, eval_spec, eval_transform
from compress.distill.losses import LOSSES, KDBatch
from compress.distill.objective import Objective, default_losses
from compress.distill.train import cross_entropy_loss, fit
from compress.models import ModelSpec, build_model

CLASSES = ("ant", "bee", "cat")
SIZE = 8  # data.image_size of most tests: small inputs train in milliseconds
AUGMENT = {"random_resized_crop": True, "crop_scale": [0.5, 1.0], "flip": True, "color_jitter": 0.3,
           "randaugment": True, "randaugment_ops": 1}


def pixels(size: int, seed: int, mode: str = "RGB") -> np.ndarray:
    shape = (size, size) if mode == "L" else (size, size, 3)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def image_bytes(size: int, seed: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels(size, seed)).save(buffer, format=fmt)
    return buffer.getvalue()


def sample(i: int, seed: int) -> tuple[int, str, bytes]:
    """(size, suffix, encoded bytes) of image i: JPEG and PNG in turn, 12..20 pixels square."""
    size, fmt = 12 + (3 * i) % 9, "JPEG" if i % 2 == 0 else "PNG"
    return size, ".jpg" if fmt == "JPEG" else ".png", image_bytes(size, seed * 1000 + i, fmt)


def image_folder(root: Path, classes=CLASSES, per_class: int = 12, seed: int = 0) -> list[Path]:
    """One sub-folder of images per class; the files in the order an imagefolder source lists them."""
    files = []
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _, suffix, data = sample(i, seed + 100 * k)
            files.append(root / name / f"{i:02d}{suffix}")
            files[-1].write_bytes(data)
    return files


def truncated_jpeg(path: Path) -> Path:
    """A JPEG whose header is whole and whose pixel data stops halfway."""
    data = image_bytes(48, 7, "JPEG")
    path.write_bytes(data[:len(data) // 2])
    return path


def new_model(classes: int = len(CLASSES), channels: int = 3, size: int = SIZE) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec("cnn", channels, classes, size, {"channels": [4, 8]}))


def fit_quietly(model, data, work_dir: Path, epochs: int = 1, **kwargs):
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=0.01)
    return fit(model, data.train, data.val, cfg, work_dir, 0, log=lambda _: None, **kwargs)


def imagefolder_config(path: Path, **options) -> DataConfig:
    return DataConfig(source="imagefolder", path=path, **{"image_size": SIZE, "workers": 0, **options})


def last_weights(work_dir: Path) -> list[torch.Tensor]:
    """The weights after the last epoch (fit hands back the best epoch's, which may be an earlier one)."""
    return list(torch.load(work_dir / "last.pt", weights_only=True)["model"].values())


# --- imagefolder: labels, shapes, evaluation tensors, splits -------------------------------------------------

@pytest.mark.parametrize("eval_resize", [None, 14])
def test_a_val_folder_is_numbered_like_train_and_evaluates_as_the_recorded_steps(tmp_path, eval_resize):
    image_folder(tmp_path / "train")
    val_files = image_folder(tmp_path / "val", classes=("bee", "cat"), per_class=3, seed=1)
    cfg = imagefolder_config(tmp_path / "train", val_path=tmp_path / "val", eval_resize=eval_resize)
    data = load_dataset(cfg, seed=0)
    assert data.class_names == list(CLASSES) and len(data.train) == 36
    assert data.val.labels.tolist() == [1, 1, 1, 2, 2, 2]  # bee and cat keep train's numbers
    assert data.input_shape == (3, SIZE, SIZE) and data.val.sample_shape == (3, SIZE, SIZE)
    recorded = data.preprocessing()
    assert recorded["image"] == data.image_spec == eval_spec(cfg, 3, None)
    assert recorded["image"]["size"] == [SIZE, SIZE] and recorded["image"]["crop"] == (
        None if eval_resize is None else [SIZE, SIZE])
    assert len(recorded["mean"]) == len(recorded["std"]) == 3
    steps = eval_transform(recorded["image"], recorded["mean"], recorded["std"])
    for i, file in enumerate(val_files):
        assert torch.equal(torch.from_numpy(data.val.inputs([i])[0]), steps(Image.open(file))), file
    x, y = next(data.val.batches(4))
    assert np.array_equal(x, data.val.inputs(range(4))) and y.tolist() == [1, 1, 1, 2]


def test_a_val_fraction_split_is_stratified_and_seeded(tmp_path):
    files = image_folder(tmp_path / "images")
    cfg = imagefolder_config(tmp_path / "images", val_fraction=0.25)

    def split(seed: int) -> tuple[list[str], list[str], np.ndarray]:
        data = load_dataset(cfg, seed)
        names = [[s.records.name(i) for i in range(len(s))] for s in (data.train, data.val)]
        return names[0], names[1], data.val.labels

    train, val, val_labels = split(0)
    assert np.bincount(val_labels).tolist() == [3, 3, 3]
    assert sorted(train + val) == sorted(map(str, files)) and not set(train) & set(val)
    assert split(0)[:2] == (train, val)
    assert split(1)[1] != val


# --- manifest, Hugging Face and webdataset sources: load and train one epoch -----------------------------------

def manifest_source(root: Path) -> DataConfig:
    """train.csv and val.csv listing files of one images folder, class names as labels."""
    (root / "images").mkdir()
    rows = {"train": [], "val": []}
    for k, name in enumerate(CLASSES):
        for i in range(10):
            _, suffix, data = sample(i, k)
            (root / "images" / f"{name}{i}{suffix}").write_bytes(data)
            rows["train" if i < 8 else "val"].append(f"images/{name}{i}{suffix},{name}")
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("\n".join(["path,label"] + lines) + "\n")
    return DataConfig(source="manifest", path=root / "train.csv", val_path=root / "val.csv", image_size=SIZE, workers=0)


def hf_source(root: Path) -> DataConfig:
    """A DatasetDict saved to disk: its validation split is the val split."""
    import datasets

    def split(count: int, seed: int):
        table = {"image": [Image.open(io.BytesIO(sample(i, seed)[2])) for i in range(count)],
                 "label": [i % len(CLASSES) for i in range(count)]}
        return datasets.Dataset.from_dict(table).cast_column("image", datasets.Image()) \
            .cast_column("label", datasets.ClassLabel(names=list(CLASSES)))

    datasets.DatasetDict({"train": split(24, 0), "validation": split(7, 1)}).save_to_disk(str(root / "dd"))
    return DataConfig(source="hf", path=root / "dd", image_size=SIZE, workers=0)


def webdataset_source(root: Path) -> DataConfig:
    import webdataset

    (root / "shards").mkdir()
    with webdataset.ShardWriter(str(root / "shards" / "train-%06d.tar"), maxcount=10, verbose=0) as sink:
        for i in range(30):
            _, suffix, data = sample(i, 0)
            sink.write({"__key__": f"s{i:03d}", suffix[1:]: data, "cls": i % len(CLASSES)})
    return DataConfig(source="webdataset", path=root / "shards", image_size=SIZE, val_fraction=0.2, workers=0)


@pytest.mark.parametrize("source, sizes", [(manifest_source, (24, 6)), (hf_source, (24, 7)),
                                           (webdataset_source, (24, 6))])
def test_each_source_of_files_streams_into_one_epoch_of_training(tmp_path, source, sizes):
    cfg = source(tmp_path)
    data = load_dataset(cfg, seed=0)
    assert isinstance(data.train, StreamSplit) and (len(data.train), len(data.val)) == sizes
    assert data.input_shape == (3, SIZE, SIZE) and data.num_classes == 3
    if cfg.source == "hf":
        assert data.val.labels.tolist() == [i % 3 for i in range(7)]  # the DatasetDict's validation rows
    model = new_model()
    result = fit_quietly(model, data, tmp_path / "fit")
    assert result.epochs_trained == 1 and (tmp_path / "fit" / "best.pt").is_file()
    assert len((tmp_path / "fit" / "metrics.jsonl").read_text().splitlines()) == 1
    assert model(torch.from_numpy(data.val.inputs([0]))).shape == (1, 3)


# --- determinism: augmentation seeded by (seed, epoch, index), whatever the workers -----------------------------

class Recorder:
    """A cross-entropy loss that keeps each batch's indices and inputs, and can die at a given step."""

    def __init__(self, die_at_step: int | None = None):
        self.batches: list[tuple[list[int], torch.Tensor]] = []
        self.die_at_step = die_at_step
        self.loss = cross_entropy_loss()

    def __call__(self, logits, batch):
        if self.die_at_step is not None and len(self.batches) + 1 == self.die_at_step:
            raise KeyboardInterrupt  # killed mid-epoch, after the last checkpoint
        self.batches.append((batch.indices.tolist(), batch.x.detach().clone()))
        return self.loss(logits, batch)


@pytest.mark.parametrize("mix", [False, True], ids=["augment", "augment+mixup"])
def test_augmented_training_with_workers_repeats_exactly_and_a_killed_run_resumes_to_the_same_weights(tmp_path, mix):
    image_folder(tmp_path / "images", per_class=8)
    augment = {**AUGMENT, "mixup": 0.4} if mix else AUGMENT
    cfg = imagefolder_config(tmp_path / "images", val_fraction=0.25, augment=augment, workers=2)

    def run(work_dir: Path, recorder: Recorder):
        data = load_dataset(cfg, seed=0)  # a fresh process would load it afresh
        assert data.train.augments
        model = new_model()
        mixer = batch_mixer(cfg.augment, data.num_classes)
        fit(model, data.train, data.val, TrainConfig(epochs=2, batch_size=8, lr=0.01), work_dir, 0,
            loss_fn=recorder, log=lambda _: None, mixer=mixer)
        return last_weights(work_dir)

    first, second = Recorder(), Recorder()
    reference = run(tmp_path / "first", first)
    assert all(torch.equal(a, b) for a, b in zip(reference, run(tmp_path / "second", second)))
    for (idx_a, x_a), (idx_b, x_b) in zip(first.batches, second.batches):
        assert idx_a == idx_b and torch.equal(x_a, x_b)
    steps = len(first.batches) // 2
    one = {i: x for idx, x in first.batches[:steps] for i, x in zip(idx, x)}
    two = {i: x for idx, x in first.batches[steps:] for i, x in zip(idx, x)}
    assert sum(not torch.equal(one[i], two[i]) for i in one) == len(one)  # every image changes between epochs

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", Recorder(die_at_step=steps + 2))
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["epoch"] == 1
    second_epoch = Recorder()
    resumed = run(tmp_path / "killed", second_epoch)
    assert len(second_epoch.batches) == steps
    for (idx_a, x_a), (idx_b, x_b) in zip(first.batches[steps:], second_epoch.batches):
        assert idx_a == idx_b and torch.equal(x_a, x_b)  # the same augmented (and mixed) inputs
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed))


# --- a split holds the list of examples, never the pixels ------------------------------------------------------

def test_a_stream_split_pickles_small_without_pixels(tmp_path):
    for i in range(1000):
        folder = tmp_path / "images" / CLASSES[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels(32, i)).save(folder / f"{i:04d}.png")
    data = load_dataset(imagefolder_config(tmp_path / "images", val_fraction=0.1), seed=0)
    assert len(data.train) + len(data.val) == 1000
    pickled = pickle.dumps(data.train)
    assert len(pickled) < 100_000  # 1000 images of 32x32x3 float32 would be 12 MB
    copy = pickle.loads(pickled)
    assert np.array_equal(copy.inputs([5]), data.train.inputs([5]))


# --- bad inputs: one line naming the file, exit 2, before any stage trains -------------------------------------

def pipeline_on(tiny_config: dict, data: dict) -> dict:
    """The tiny pipeline on image data, with a small CNN teacher and one epoch per training stage."""
    tiny_config["data"] = {"image_size": SIZE, "workers": 0, **data}
    tiny_config["teacher"] = {"model": "cnn", "kwargs": {"channels": [4, 8]},
                              "train": {"epochs": 1, "batch_size": 16, "lr": 0.005}}
    tiny_config["stages"]["distill"]["epochs"] = 1
    return tiny_config


def run_cli(config: dict, write_pipeline, run_dir: Path, quiet: bool = True) -> int:
    return main([*(["--quiet"] if quiet else []), "run", str(write_pipeline(config)), "--run-dir", str(run_dir)])


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def not_an_image(root: Path) -> tuple[dict, list[str]]:
    image_folder(root / "images", per_class=6)
    (root / "images" / "bee" / "03.jpg").write_text("a note saved under an image's name\n")
    return {"source": "imagefolder", "path": str(root / "images")}, [f"{root / 'images' / 'bee' / '03.jpg'}: "
                                                                      "not a readable image (", "skip_bad_images"]


def cut_pixels(root: Path) -> tuple[dict, list[str]]:
    """In train, whose images (up to STATISTICS_SAMPLE of them) are decoded for the mean and std at load."""
    image_folder(root / "train", per_class=6)
    image_folder(root / "val", per_class=2, seed=1)
    truncated_jpeg(root / "train" / "cat" / "02.jpg")
    return {"source": "imagefolder", "path": str(root / "train"), "val_path": str(root / "val")}, [
        f"{root / 'train' / 'cat' / '02.jpg'}: not a readable image ("]


def mixed_channels(root: Path) -> tuple[dict, list[str]]:
    image_folder(root / "images", per_class=6)
    Image.fromarray(pixels(14, 0, "L")).save(root / "images" / "ant" / "05.png")
    return {"source": "imagefolder", "path": str(root / "images")}, [
        "images of mixed channel counts (", f"{root / 'images' / 'ant' / '05.png'} has 1", "has 3",
        "data.channels: 3"]


def val_class_unknown(root: Path) -> tuple[dict, list[str]]:
    image_folder(root / "train", per_class=6)
    image_folder(root / "val", classes=("ant", "dog"), per_class=2)
    return {"source": "imagefolder", "path": str(root / "train"), "val_path": str(root / "val")}, [
        f"{root / 'val' / 'dog'}: data.val_path: class folder 'dog' is not among the train classes"]


def empty_class(root: Path) -> tuple[dict, list[str]]:
    image_folder(root / "images", per_class=6)
    (root / "images" / "dog").mkdir()
    return {"source": "imagefolder", "path": str(root / "images")}, [
        f"{root / 'images' / 'dog'}: data.path: class 'dog' has no images"]


def manifest_file_missing(root: Path) -> tuple[dict, list[str]]:
    cfg = manifest_source(root)
    lines = (root / "train.csv").read_text().splitlines()
    lines[3] = "images/gone.png,bee"
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return {"source": "manifest", "path": str(cfg.path), "val_path": str(cfg.val_path)}, [
        f"{root / 'train.csv'}:4: path: images/gone.png does not exist"]


@pytest.mark.parametrize("make", [not_an_image, cut_pixels, mixed_channels, val_class_unknown, empty_class,
                                  manifest_file_missing])
def test_a_bad_image_input_is_one_line_naming_it_before_any_stage_runs(tiny_config, write_pipeline, tmp_path,
                                                                         capsys, make):
    data, expected = make(tmp_path)
    assert run_cli(pipeline_on(tiny_config, data), write_pipeline, tmp_path / "run") == 2
    line = error_line(capsys)
    assert all(part in line for part in expected), line
    assert not (tmp_path / "run" / "stages").exists()


def test_mixed_channel_counts_load_converted_with_channels_3(tmp_path):
    data, _ = mixed_channels(tmp_path)
    gray = tmp_path / "images" / "ant" / "05.png"
    loaded = load_dataset(imagefolder_config(Path(data["path"]), channels=3, val_fraction=0.25), seed=0)
    assert loaded.input_shape == (3, SIZE, SIZE) and loaded.image_spec["mode"] == "RGB"
    split = next(s for s in (loaded.train, loaded.val) if str(gray) in [s.records.name(i) for i in range(len(s))])
    index = [split.records.name(i) for i in range(len(split))].index(str(gray))
    x = split.inputs([index])[0]
    assert x.shape == (3, SIZE, SIZE) and np.allclose(x[0] * loaded.std[0] + loaded.mean[0],
                                                      x[1] * loaded.std[1] + loaded.mean[1], atol=1e-5)


def test_a_truncated_image_found_while_training_is_one_line_naming_it(tiny_config, write_pipeline, tmp_path,
                                                                        capsys):
    """Only the train statistics' sample is decoded before training: a val image cut short is met in a loader worker."""
    image_folder(tmp_path / "train", per_class=6)
    image_folder(tmp_path / "val", per_class=2, seed=1)
    truncated_jpeg(tmp_path / "val" / "bee" / "00.jpg")
    data = {"source": "imagefolder", "path": str(tmp_path / "train"), "val_path": str(tmp_path / "val"), "workers": 2}
    assert run_cli(pipeline_on(tiny_config, data), write_pipeline, tmp_path / "run") == 2
    assert f"{tmp_path / 'val' / 'bee' / '00.jpg'}: not a readable image (" in error_line(capsys)


def test_with_skip_bad_images_a_run_goes_on_and_says_what_it_skipped(tiny_config, write_pipeline, tmp_path, capsys):
    image_folder(tmp_path / "train", per_class=6)
    image_folder(tmp_path / "val", per_class=2, seed=1)
    (tmp_path / "train" / "bee" / "03.jpg").write_text("not an image\n")
    data = {"source": "imagefolder", "path": str(tmp_path / "train"), "val_path": str(tmp_path / "val"),
            "skip_bad_images": True}
    assert run_cli(pipeline_on(tiny_config, data), write_pipeline, tmp_path / "run", quiet=False) == 0
    out = capsys.readouterr().out
    assert (f"[data] skipped 1 unreadable image(s) (data.skip_bad_images): {tmp_path / 'train' / 'bee' / '03.jpg'}"
            in out)
    assert "[data] 18 train, 6 val images decoded per batch" in out  # 3 x 6 readable ones
    assert (tmp_path / "run" / "report.md").is_file()


def test_a_truncated_image_is_left_out_of_its_batch_with_skip_bad_images(tmp_path):
    image_folder(tmp_path / "images", per_class=6)
    truncated = truncated_jpeg(tmp_path / "images" / "cat" / "02.jpg")
    for workers in (0, 2):
        cfg = imagefolder_config(tmp_path / "images", skip_bad_images=True, val_fraction=0.25, workers=workers,
                                 augment=AUGMENT)
        data = load_dataset(cfg, seed=0)
        names = [data.train.records.name(i) for i in range(len(data.train))]
        if str(truncated) not in names:
            data.train, data.val = data.val, data.train  # train on the split that holds it
            names = [data.train.records.name(i) for i in range(len(data.train))]
        recorder = Recorder()
        fit_quietly(new_model(), data, tmp_path / f"fit{workers}", loss_fn=recorder)
        seen = sorted(i for idx, _ in recorder.batches for i in idx)
        assert seen == sorted(set(range(len(names))) - {names.index(str(truncated))}), workers


def test_a_truncated_first_image_with_skip_bad_images_still_distills(tmp_path):
    """The objective probes feature shapes on the first training inputs: it passes over one that does not decode."""
    image_folder(tmp_path / "train", per_class=6)
    image_folder(tmp_path / "val", per_class=2, seed=1)
    truncated_jpeg(tmp_path / "train" / "ant" / "00.jpg")  # train index 0
    cfg = imagefolder_config(tmp_path / "train", val_path=tmp_path / "val", skip_bad_images=True)
    data = load_dataset(cfg, seed=0)
    logs: list[str] = []
    student, teacher = new_model(), new_model()
    train_cfg = TrainConfig(epochs=1, batch_size=8)
    objective = Objective(default_losses(4.0, 0.7), student, teacher, data.train, train_cfg, 4.0,
                          cache_dir=tmp_path / "cache", log=logs.append)
    assert any("teacher runs on every batch (skip_bad_images" in line for line in logs), logs
    result = fit(student, data.train, data.val, train_cfg, tmp_path / "fit", 0, loss_fn=objective, log=logs.append)
    assert result.epochs_trained == 1


# --- MixUp / CutMix: soft labels reach the cross-entropy ------------------------------------------------------

def test_mixup_and_cutmix_train_an_epoch_on_soft_labels(tmp_path):
    image_folder(tmp_path / "images", per_class=6)
    cfg = imagefolder_config(tmp_path / "images", val_fraction=0.25, augment={**AUGMENT, "mixup": 0.2, "cutmix": 1.0})
    data = load_dataset(cfg, seed=0)
    seen: list = []
    plain = cross_entropy_loss()

    def loss_fn(logits, batch):
        seen.append((logits.detach(), batch.labels, batch.soft_labels))
        return plain(logits, batch)

    result = fit_quietly(new_model(), data, tmp_path / "fit", loss_fn=loss_fn,
                         mixer=batch_mixer(cfg.augment, data.num_classes))
    assert result.epochs_trained == 1 and len(seen) == 2
    for logits, labels, soft in seen:
        assert soft is not None and soft.shape == (len(labels), 3)
        assert torch.allclose(soft.sum(1), torch.ones(len(labels))) and float(soft.max(1).values.min()) < 1
        assert torch.equal(labels, soft.argmax(1))
        ce = LOSSES["ce"]()(KDBatch(logits, None, labels, soft_labels=soft))
        assert torch.allclose(ce, F.cross_entropy(logits, soft))
        assert not torch.allclose(ce, F.cross_entropy(logits, labels))


# --- the teacher-output cache on disk ---------------------------------------------------------------------------

def test_the_teacher_outputs_of_a_stream_are_cached_on_disk_and_reused(tmp_path, monkeypatch):
    import compress.distill.objective as objective_module

    monkeypatch.setattr(objective_module, "IN_MEMORY_BYTES", 0)  # a cache of any size stays memory-mapped
    image_folder(tmp_path / "images", per_class=6)
    data = load_dataset(imagefolder_config(tmp_path / "images", val_fraction=0.25), seed=0)
    teacher, train_cfg = new_model(), TrainConfig(epochs=1, batch_size=8)

    def objective(student: torch.nn.Module, logs: list[str]) -> Objective:
        return Objective(default_losses(4.0, 0.7), student, teacher, data.train, train_cfg, 4.0,
                         cache_dir=tmp_path / "cache", log=logs.append)

    first_logs: list[str] = []
    first = objective(new_model(), first_logs)
    assert any("teacher outputs computed once" in line and "memory-mapped in" in line for line in first_logs)
    assert json.loads((tmp_path / "cache" / "complete.json").read_text()) == {"inputs": len(data.train),
                                                                             "arrays": ["logits"]}
    logits = first.cache[0]
    assert isinstance(logits, np.memmap) and logits.shape == (len(data.train), 3)
    with torch.no_grad():
        expected = teacher.eval()(torch.from_numpy(data.train.inputs(range(len(data.train)))))
    assert np.allclose(logits, expected.numpy(), atol=1e-5)

    reused_logs: list[str] = []
    student = new_model()
    second = objective(student, reused_logs)
    assert any("teacher outputs reused from" in line for line in reused_logs), reused_logs
    assert fit(student, data.train, data.val, train_cfg, tmp_path / "fit", 0, loss_fn=second,
               log=lambda _: None).epochs_trained == 1
    per_batch, per_batch_logs = new_model(), []
    uncached = Objective(default_losses(4.0, 0.7), per_batch, teacher, data.train, train_cfg, 4.0, use_cache=False,
                         log=per_batch_logs.append)
    assert uncached.cache is None and "teacher runs on every batch (teacher_cache: false)" in per_batch_logs
    fit(per_batch, data.train, data.val, train_cfg, tmp_path / "per_batch", 0, loss_fn=uncached, log=lambda _: None)
    for cached_weight, weight in zip(last_weights(tmp_path / "fit"), last_weights(tmp_path / "per_batch")):
        assert torch.allclose(cached_weight, weight, atol=1e-5)  # each batch read its own inputs' cached rows

    augmented = load_dataset(imagefolder_config(tmp_path / "images", val_fraction=0.25, augment=AUGMENT), seed=0)
    augmented_logs: list[str] = []
    Objective(default_losses(4.0, 0.7), new_model(), teacher, augmented.train, train_cfg, 4.0,
              cache_dir=tmp_path / "augmented_cache", log=augmented_logs.append)
    assert any(line.startswith("teacher runs on every batch (random augmentation") for line in augmented_logs)
    assert not (tmp_path / "augmented_cache").exists()


# --- a torch Dataset from package.module:function ---------------------------------------------------------------

class TensorItems(torch.utils.data.Dataset):
    """A user's Dataset of (CHW tensor, label) items with its labels as `.targets`."""

    def __init__(self, count: int, classes: int):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(count, 3, SIZE, SIZE, generator=generator)
        self.targets = [i % classes for i in range(count)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.x[index], self.targets[index]


def tensor_items(count: int = 30, classes: int = 3) -> TensorItems:
    return TensorItems(count, classes)


def test_a_torch_dataset_from_a_function_streams_and_trains(tmp_path):
    cfg = DataConfig(source="tests.test_streaming_data:tensor_items", kwargs={"count": 30}, workers=0)
    data = load_dataset(cfg, seed=0)
    assert isinstance(data.train, StreamSplit) and len(data.train) + len(data.val) == 30
    assert data.input_shape == (3, SIZE, SIZE) and data.class_names == ["0", "1", "2"]
    items = tensor_items()
    row = int(data.val.records.indices[0])
    assert torch.equal(torch.from_numpy(data.val.inputs([0])[0]), items[row][0])
    assert data.val.labels[0] == items[row][1]
    result = fit_quietly(new_model(), data, tmp_path / "fit")
    assert result.epochs_trained == 1


def test_a_small_teacher_cache_is_read_into_memory_once(tmp_path):
    """Indexing a memory map per batch costs more than the epoch of a small data set: a cache under
    IN_MEMORY_BYTES is read once into tensors (and still reused from disk by a resumed run)."""
    image_folder(tmp_path / "images", per_class=6)
    data = load_dataset(imagefolder_config(tmp_path / "images", val_fraction=0.25), seed=0)
    teacher, train_cfg = new_model(), TrainConfig(epochs=1, batch_size=8)
    logs: list[str] = []
    objective = Objective(default_losses(4.0, 0.7), new_model(), teacher, data.train, train_cfg, 4.0,
                          cache_dir=tmp_path / "cache", log=logs.append)
    assert isinstance(objective.cache[0], torch.Tensor) and (tmp_path / "cache" / "logits.npy").is_file()
    assert any("read into memory (small)" in line for line in logs), logs
    reused: list[str] = []
    again = Objective(default_losses(4.0, 0.7), new_model(), teacher, data.train, train_cfg, 4.0,
                      cache_dir=tmp_path / "cache", log=reused.append)
    assert any("reused from" in line for line in reused) and torch.equal(again.cache[0], objective.cache[0])
