"""Object-detection data: COCO and YOLO readers, splits, channel checks, the torch data set and the synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.core.errors import ConfigError
from compress.tasks.object_detection.detection_data import Augment, DetectionDataset, collate, make_loader
from compress.tasks.object_detection.detection_records import read_coco
from compress.tasks.object_detection.detection_splits import check_channels, load_splits
from compress.tasks.object_detection.yolo_records import read_yolo, yolo_splits
from compress.tasks.object_detection.synthetic import write_digits_coco

CONFIG = "pipeline.yaml"


def _image(path: Path, size: tuple[int, int] = (64, 48), mode: str = "RGB",
           rects: list[tuple[tuple[int, int, int, int], tuple[int, int, int]]] = ()) -> Path:
    """A grey image of `size` (w, h), with solid rectangles ((x0, y0, x1, y1), colour) drawn on it."""
    from PIL import Image, ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (60, 60, 60))
    draw = ImageDraw.Draw(image)
    for (x0, y0, x1, y1), colour in rects:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)
    image.convert(mode).save(path)
    return path


def _coco_dict() -> dict:
    """Two images, categories with non-contiguous ids (7 before 3 in the file), one crowd annotation."""
    return {
        "images": [{"id": 10, "file_name": "a.png", "width": 64, "height": 48},
                   {"id": 11, "file_name": "b.png", "width": 32, "height": 32},
                   {"id": 12, "file_name": "empty.png", "width": 32, "height": 32}],
        "annotations": [{"id": 1, "image_id": 10, "category_id": 7, "bbox": [4, 5, 20, 10], "iscrowd": 0},
                        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [30, 20, 34, 28.5]},
                        {"id": 3, "image_id": 11, "category_id": 7, "bbox": [0, 0, 32, 32], "iscrowd": 1}],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
    }


def _write_coco(folder: Path, data: dict | None = None, image_folder: str = "images") -> Path:
    data = _coco_dict() if data is None else data
    for image in data["images"]:
        _image(folder / image_folder / image["file_name"], (image["width"], image["height"]))
    path = folder / "instances.json"
    path.write_text(json.dumps(data))
    return path


def _write_yolo(root: Path, split: str | None, files: dict[str, str | None], size=(100, 50)) -> None:
    """Images under root/images[/split] with the given label text (None: no label file)."""
    for stem, labels in files.items():
        _image(root / "images" / (split or "") / f"{stem}.jpg", size)
        if labels is not None:
            label = root / "labels" / (split or "") / f"{stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(labels)


# ---- COCO ------------------------------------------------------------------------------------------------

def test_synthetic_coco_round_trips_through_read_coco(tmp_path):
    paths = write_digits_coco(tmp_path, {"train": 20, "val": 5, "test": 5}, canvas=96, seed=1)
    assert set(paths) == {"train", "val", "test"}
    for split, path in paths.items():
        written = json.loads(path.read_text())
        data = read_coco(path, None, CONFIG)
        assert data.class_names == [str(d) for d in range(10)] and data.category_ids == list(range(1, 11))
        assert [r.image_id for r in data.images] == [i["id"] for i in written["images"]]
        for record in data.images:
            mine = [a for a in written["annotations"] if a["image_id"] == record.image_id]
            xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in mine)]
            np.testing.assert_allclose(record.boxes, np.asarray(xyxy, np.float32).reshape(-1, 4))
            assert record.labels.tolist() == [a["category_id"] - 1 for a in mine]
            assert record.path.is_file() and (record.width, record.height) == (96, 96)
    train = read_coco(paths["train"], None, CONFIG)
    assert any(len(r.boxes) == 0 for r in train.images)  # seed 1 draws some background canvases


def test_non_contiguous_category_ids_become_contiguous_indices_sorted_by_id(tmp_path):
    data = read_coco(_write_coco(tmp_path), None, CONFIG)
    assert data.class_names == ["dog", "cat"] and data.category_ids == [3, 7]
    first, crowd_only, empty = data.images
    assert first.labels.tolist() == [1, 0]  # cat (id 7) is index 1, dog (id 3) index 0
    np.testing.assert_allclose(first.boxes, [[4, 5, 24, 15], [30, 20, 64, 48]])  # 1 px of slack, clipped
    assert first.boxes.dtype == np.float32 and first.labels.dtype == np.int64
    assert crowd_only.boxes.shape == (0, 4) and empty.boxes.shape == (0, 4)  # kept as background images
    assert first.path == tmp_path / "images" / "a.png"  # found in images/ beside the JSON


def test_images_are_found_beside_the_json_or_in_images_dir(tmp_path):
    beside = read_coco(_write_coco(tmp_path / "beside", image_folder="."), None, CONFIG)
    assert beside.images[0].path == tmp_path / "beside" / "a.png"
    json_path = _write_coco(tmp_path / "elsewhere", image_folder="pixels")
    assert read_coco(json_path, tmp_path / "elsewhere" / "pixels", CONFIG).images[1].path.name == "b.png"


def _bbox(value):
    return lambda d: d["annotations"][1].update(bbox=value)


@pytest.mark.parametrize("change, field", [
    (_bbox([30, 20, 0, 5]), "annotations[1].bbox"),  # zero width
    (_bbox([30, 20, 5, -3]), "annotations[1].bbox"),  # negative height
    (_bbox([30, 20, 40, 5]), "annotations[1].bbox"),  # past the right edge by more than a pixel
    (_bbox([-3, 20, 5, 5]), "annotations[1].bbox"),
    (_bbox([30, 20, 5]), "annotations[1].bbox"),
    (lambda d: d["annotations"][0].update(category_id=99), "annotations[0].category_id"),
    (lambda d: d["annotations"][1].update(image_id=404), "annotations[1].image_id"),
    (lambda d: d["images"][2].update(id=10), "images[2].id"),
    (lambda d: d["images"][1].update(file_name="missing.png"), "images[1].file_name"),
    (lambda d: d.pop("annotations"), "annotations"),
    (lambda d: d.pop("categories"), "categories"),
])
def test_bad_coco_is_refused_naming_the_json_and_the_field(tmp_path, change, field):
    data = _coco_dict()
    path = _write_coco(tmp_path, data)
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as caught:
        read_coco(path, None, CONFIG)
    assert (caught.value.file, caught.value.path) == (str(path), field)


def test_a_json_that_does_not_parse_is_refused_with_its_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [],\n "annotations": [,]}')
    with pytest.raises(ConfigError, match="not valid JSON") as caught:
        read_coco(path, None, CONFIG)
    assert (caught.value.file, caught.value.path) == (str(path), "line 2")


# ---- YOLO ------------------------------------------------------------------------------------------------

def test_yolo_with_split_folders_and_data_yaml_list(tmp_path):
    _write_yolo(tmp_path, "train", {"a": "0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.2 0.2\n", "b": None, "c": ""})
    _write_yolo(tmp_path, "val", {"d": "1 0.5 0.5 1 1"})
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [car, bike]\n")
    assert yolo_splits(tmp_path) == ["train", "val"]
    train = read_yolo(tmp_path, "train", None, CONFIG)
    assert train.class_names == ["car", "bike"] and train.category_ids == [0, 1]
    a, b, c = train.images
    assert [r.image_id for r in train.images] == [1, 2, 3] and (a.width, a.height) == (100, 50)
    np.testing.assert_allclose(a.boxes, [[40, 15, 60, 35], [0, 0, 20, 10]], atol=1e-4)
    assert a.labels.tolist() == [0, 1]
    assert b.boxes.shape == (0, 4) and c.boxes.shape == (0, 4)  # no label file, empty label file: background
    np.testing.assert_allclose(read_yolo(tmp_path, "val", None, CONFIG).images[0].boxes, [[0, 0, 100, 50]])


@pytest.mark.parametrize("names_file, text", [
    ("data.yaml", "names:\n  0: car\n  1: bike\n"),
    ("data.yaml", "names: [car, bike]\n"),
    ("classes.txt", "car\nbike\n"),
])
def test_flat_yolo_takes_class_names_from_data_yaml_or_classes_txt(tmp_path, names_file, text):
    _write_yolo(tmp_path, None, {"x": "1 0.5 0.5 0.5 0.5"})
    (tmp_path / names_file).write_text(text)
    assert yolo_splits(tmp_path) == []
    data = read_yolo(tmp_path, None, None, CONFIG)
    assert data.class_names == ["car", "bike"] and data.images[0].labels.tolist() == [1]


def test_names_in_the_config_win_and_no_names_at_all_is_refused(tmp_path):
    _write_yolo(tmp_path, None, {"x": "0 0.5 0.5 0.5 0.5"})
    assert read_yolo(tmp_path, None, ["person"], CONFIG).class_names == ["person"]
    with pytest.raises(ConfigError) as caught:
        read_yolo(tmp_path, None, None, CONFIG)
    assert (caught.value.file, caught.value.path) == (CONFIG, "data.detection.names")


@pytest.mark.parametrize("labels, field", [
    ("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n", "line 2"),  # four numbers
    ("0 0.5 0.5 0.2 zero\n", "line 1"),
    ("2 0.5 0.5 0.2 0.2\n", "line 1"),  # class index beyond the two names
    ("0.5 0.5 0.5 0.2 0.2\n", "line 1"),  # not an integer class
    ("0 0.95 0.5 0.2 0.2\n", "line 1"),  # right edge at 1.05
    ("0 0.5 0.5 0 0.2\n", "line 1"),  # zero width
    ("\n\n0 0.5 0.5 0.2 -0.1\n", "line 3"),
])
def test_bad_yolo_label_lines_are_refused_naming_the_label_file_and_line(tmp_path, labels, field):
    _write_yolo(tmp_path, None, {"x": labels})
    with pytest.raises(ConfigError) as caught:
        read_yolo(tmp_path, None, ["car", "bike"], CONFIG)
    assert (caught.value.file, caught.value.path) == (str(tmp_path / "labels" / "x.txt"), field)


def test_yolo_boxes_within_the_rounding_slack_are_clipped(tmp_path):
    _write_yolo(tmp_path, None, {"x": "0 0.1 0.5 0.2005 0.2"})
    np.testing.assert_allclose(read_yolo(tmp_path, None, ["car"], CONFIG).images[0].boxes, [[0, 20, 20.025, 30]],
                               atol=1e-3)


# ---- splits ----------------------------------------------------------------------------------------------

def _split_paths(splits) -> dict[str, set[str]]:
    return {name: {r.path.name for r in data.images} for name, data in splits.items()}


def test_fraction_splits_keep_every_image_in_its_split_when_images_are_added(tmp_path):
    _write_yolo(tmp_path, None, {f"im{i:03d}": "0 0.5 0.5 0.2 0.2" for i in range(40)}, size=(16, 16))
    before = _split_paths(load_splits("yolo", tmp_path, None, None, 0.25, 0.25, 7, None, ["a"], CONFIG))
    assert set(before) == {"train", "val", "test"} and all(before.values())
    _write_yolo(tmp_path, None, {f"new{i:03d}": "0 0.5 0.5 0.2 0.2" for i in range(40)}, size=(16, 16))
    after = _split_paths(load_splits("yolo", tmp_path, None, None, 0.25, 0.25, 7, None, ["a"], CONFIG))
    for split in before:
        assert before[split] <= after[split]
    assert sum(map(len, after.values())) == 80
    reseeded = _split_paths(load_splits("yolo", tmp_path, None, None, 0.25, 0.25, 8, None, ["a"], CONFIG))
    assert reseeded != after


def test_yolo_split_folders_are_used_as_given(tmp_path):
    _write_yolo(tmp_path, "train", {"a": "0 0.5 0.5 0.2 0.2", "b": ""})
    _write_yolo(tmp_path, "val", {"c": ""})
    _write_yolo(tmp_path, "test", {"d": ""})
    splits = load_splits("yolo", tmp_path, None, None, 0.5, None, 0, None, ["a"], CONFIG)
    assert _split_paths(splits) == {"train": {"a.jpg", "b.jpg"}, "val": {"c.jpg"}, "test": {"d.jpg"}}


def test_coco_val_and_test_files_are_used_and_test_is_left_out_when_not_asked(tmp_path):
    paths = write_digits_coco(tmp_path, {"train": 20, "val": 4, "test": 3}, canvas=96)
    splits = load_splits("coco", paths["train"], paths["val"], paths["test"], 0.2, None, 0, None, None, CONFIG)
    assert {k: len(v.images) for k, v in splits.items()} == {"train": 20, "val": 4, "test": 3}
    only_val = load_splits("coco", paths["train"], None, None, 0.3, None, 0, None, None, CONFIG)
    assert set(only_val) == {"train", "val"} and sum(len(v.images) for v in only_val.values()) == 20


def test_coco_splits_with_other_categories_are_refused(tmp_path):
    train = _write_coco(tmp_path / "train")
    other = _coco_dict()
    other["categories"][1]["name"] = "wolf"
    val = _write_coco(tmp_path / "val", other)
    with pytest.raises(ConfigError, match="categories") as caught:
        load_splits("coco", train, val, None, 0.2, None, 0, None, None, CONFIG)
    assert (caught.value.file, caught.value.path) == (CONFIG, "data.val_path")


@pytest.mark.parametrize("val_fraction, test_fraction, field", [
    (0.0, None, "data.val_fraction"),  # no val images at all
    (0.3, 0.001, "data.test_fraction"),  # too few images for a test split
    (0.6, 0.5, "data.val_fraction"),  # nothing left to train on
])
def test_a_split_left_empty_is_refused_naming_its_fraction(tmp_path, val_fraction, test_fraction, field):
    _write_yolo(tmp_path, None, {f"im{i}": "" for i in range(5)}, size=(8, 8))
    with pytest.raises(ConfigError) as caught:
        load_splits("yolo", tmp_path, None, None, val_fraction, test_fraction, 0, None, ["a"], CONFIG)
    assert (caught.value.file, caught.value.path) == (CONFIG, field)


# ---- channels --------------------------------------------------------------------------------------------

def test_mixed_grey_and_colour_is_refused_unless_channels_is_set(tmp_path):
    _image(tmp_path / "images" / "grey.png", mode="L")
    _image(tmp_path / "images" / "colour.png", mode="RGB")
    _image(tmp_path / "images" / "alpha.png", mode="RGBA")
    data = read_yolo(tmp_path, None, ["a"], CONFIG)
    with pytest.raises(ConfigError, match="mixed.*set data.channels") as caught:
        check_channels(data.images, None, CONFIG, "data.path")
    assert (caught.value.file, caught.value.path) == (CONFIG, "data.path")
    assert check_channels(data.images, 3, CONFIG, "data.path") == 3
    colour = [r for r in data.images if r.path.stem != "grey"]
    assert check_channels(colour, None, CONFIG, "data.path") == 3  # RGBA counts as 3


def test_grey_with_alpha_counts_as_grey(tmp_path):
    _image(tmp_path / "images" / "l.png", mode="L")
    _image(tmp_path / "images" / "la.png", mode="LA")
    assert check_channels(read_yolo(tmp_path, None, ["a"], CONFIG).images, None, CONFIG, "data.path") == 1


# ---- the torch data set ----------------------------------------------------------------------------------

RED, GREEN = (250, 20, 20), (20, 250, 20)


@pytest.fixture
def coloured(tmp_path):
    """Wide images with a red box (class 0) left and a green box (class 1) right, and one background image:
    a box's colour tells its class, so alignment of labels with boxes can be checked after augmentation."""
    for index in range(6):
        _image(tmp_path / "images" / f"im{index}.png", (200, 100),
               rects=[((10, 20, 60, 80), RED), ((120, 30, 190, 90), GREEN)])
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "labels" / f"im{index}.txt").write_text("0 0.175 0.5 0.25 0.6\n1 0.775 0.6 0.35 0.6\n")
    _image(tmp_path / "images" / "z_background.png", (50, 80))
    return read_yolo(tmp_path, None, ["red", "green"], CONFIG).images


def test_items_are_letterboxed_with_boxes_scaled_by_the_letterbox_scale(coloured):
    dataset = DetectionDataset(coloured, size=64)
    image, target = dataset[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert target["scale"] == pytest.approx(64 / 200) and target["image_id"] == 1
    np.testing.assert_allclose(target["boxes"].numpy(), coloured[0].boxes * 64 / 200, rtol=1e-6)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["labels"].tolist() == [0, 1]
    background_image, background = dataset[len(dataset) - 1]
    assert background["boxes"].shape == (0, 4) and background["labels"].shape == (0,)
    assert background_image.shape == (3, 64, 64)


def _colour_of(image: torch.Tensor, box: torch.Tensor) -> int:
    """0 if the box's centre pixels are red, 1 if green."""
    x0, y0, x1, y1 = box.tolist()
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    red, green, _ = image[:, cy - 1:cy + 2, cx - 1:cx + 2].mean(dim=(1, 2)).tolist()
    return 0 if red > green else 1


def test_augmentation_keeps_boxes_on_the_canvas_and_labels_with_their_boxes(coloured):
    torch.manual_seed(0)
    dataset = DetectionDataset(coloured[:6], size=96, train=True, augment=Augment(color=0.0))
    flipped = 0
    for _ in range(5):
        for index in range(len(dataset)):
            image, target = dataset[index]
            boxes, labels = target["boxes"], target["labels"]
            assert len(boxes) == len(labels) and image.shape == (3, 96, 96)
            assert (boxes >= 0).all() and (boxes <= 96).all()
            assert ((boxes[:, 2:] - boxes[:, :2]) >= 2).all()
            assert [_colour_of(image, box) for box in boxes] == labels.tolist()
            flipped += len(boxes) == 2 and bool(boxes[labels == 0][0, 0] > boxes[labels == 1][0, 0])
    assert flipped > 0  # the red box was seen right of the green one: flips happened


def test_colour_jitter_leaves_pixels_in_range(coloured):
    torch.manual_seed(1)
    image, _ = DetectionDataset(coloured, size=64, train=True, augment=Augment(color=0.5))[0]
    assert 0 <= image.min() <= image.max() <= 1


def test_mosaic_puts_boxes_in_all_four_quadrants(coloured):
    torch.manual_seed(0)
    still = Augment(flip=False, scale=(1.0, 1.0), translate=0.0, color=0.0, mosaic=1.0)
    image, target = DetectionDataset(coloured[:6], size=128, train=True, augment=still)[0]
    centres = (target["boxes"][:, :2] + target["boxes"][:, 2:]) / 2
    quadrants = {(int(x >= 64), int(y >= 64)) for x, y in centres.tolist()}
    assert quadrants == {(0, 0), (1, 0), (0, 1), (1, 1)} and len(target["boxes"]) == 8
    assert [_colour_of(image, box) for box in target["boxes"]] == target["labels"].tolist()


def test_loader_batches_images_and_keeps_targets_as_a_list(coloured):
    loader = make_loader(coloured, size=64, batch_size=3, train=False)
    images, targets = next(iter(loader))
    assert images.shape == (3, 3, 64, 64) and len(targets) == 3
    assert [t["image_id"] for t in targets] == [1, 2, 3]
    assert sum(len(b[1]) for b in loader) == len(coloured)
    order = [[t["image_id"] for t in batch[1]] for batch in make_loader(coloured, 64, 3, True, seed=5)]
    again = [[t["image_id"] for t in batch[1]] for batch in make_loader(coloured, 64, 3, True, seed=5)]
    assert order == again and sorted(sum(order, [])) == list(range(1, 8))
    images, targets = collate([DetectionDataset(coloured, 32)[i] for i in (0, 6)])
    assert images.shape == (2, 3, 32, 32) and [len(t["boxes"]) for t in targets] == [2, 0]


# ---- the synthetic set -----------------------------------------------------------------------------------

def test_synthetic_set_is_deterministic_for_a_seed(tmp_path):
    counts = {"train": 6, "val": 3}
    first = write_digits_coco(tmp_path / "a", counts, canvas=96, seed=3)
    second = write_digits_coco(tmp_path / "b", counts, canvas=96, seed=3)
    other = write_digits_coco(tmp_path / "c", counts, canvas=96, seed=4)
    for split in counts:
        assert first[split].read_text() == second[split].read_text()
        for image in json.loads(first[split].read_text())["images"]:
            name = image["file_name"]
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert first["train"].read_text() != other["train"].read_text()
    boxes = [a["bbox"] for a in json.loads(first["train"].read_text())["annotations"]]
    assert boxes and all(0 < w <= 40 and 0 < h <= 40 for _, _, w, h in boxes)
