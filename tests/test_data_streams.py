"""Lazy image sources: CSV/JSONL manifests, Hugging Face datasets on disk, webdataset shards, and a mapped .npz.

Each test builds real files (Pillow images, datasets' save_to_disk/to_parquet, webdataset's
ShardWriter) and checks what training relies on: labels and class names known without decoding,
`open(i)` giving the source pixels, headers, a pickle round trip (DataLoader workers get a copy),
and bad input refused in one line that names the file and the line, row or column.
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compress.core.errors import UsageError
from compress.data.hf_source import hf_records, hf_split
from compress.data.manifest import manifest_records
from compress.data.npz_mmap import npz_arrays
from compress.data.shards import shard_records

SIZE = (6, 5)  # width, height


def pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)


def png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels(seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"img{i}.png" for i in range(count)]
    for i, file in enumerate(files):
        Image.fromarray(pixels(i)).save(file)
    return files


def assert_faithful(records, seeds: list[int]) -> None:
    """open(i) is the source image, header(i) its mode and size, and a pickled copy opens the same."""
    for i, seed in enumerate(seeds):
        assert np.array_equal(np.asarray(records.open(i)), pixels(seed)), records.name(i)
        assert records.header(i) == ("RGB", SIZE)
    copy = pickle.loads(pickle.dumps(records))
    assert np.array_equal(copy.labels, records.labels) and copy.class_names == records.class_names
    assert np.array_equal(np.asarray(copy.open(len(seeds) - 1)), pixels(seeds[-1]))


# --- manifests -------------------------------------------------------------------------------------------------

def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header] + rows) + "\n")
    return path


def test_csv_manifest_numbers_class_names_in_sorted_order_and_resolves_paths_beside_it(tmp_path):
    write_images(tmp_path / "images", 4)
    manifest = write_csv(tmp_path / "train.csv", "path,label",
                         ["images/img0.png,dog", "images/img1.png,cat", f"{tmp_path}/images/img2.png,dog",
                          "images/img3.png,bird"])
    records = manifest_records(manifest, {})
    assert len(records) == 4 and records.class_names == ["bird", "cat", "dog"]
    assert records.labels.tolist() == [2, 1, 2, 0]
    assert_faithful(records, [0, 1, 2, 3])


def test_jsonl_manifest_keeps_integer_labels_and_reads_renamed_columns(tmp_path):
    write_images(tmp_path / "images", 3)
    lines = [{"file": "images/img0.png", "cls": 2}, {"file": "images/img1.png", "cls": 0},
             {"file": "images/img2.png", "cls": "2"}]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    records = manifest_records(manifest, {"image": "file", "label": "cls"})
    assert records.labels.tolist() == [2, 0, 2] and records.class_names == ["0", "1", "2"]
    assert_faithful(records, [0, 1, 2])


def test_val_manifest_takes_the_train_numbering_and_refuses_a_class_the_train_set_lacks(tmp_path):
    write_images(tmp_path / "images", 2)
    val = write_csv(tmp_path / "val.csv", "path,label", ["images/img0.png,dog", "images/img1.png,bird"])
    records = manifest_records(val, {}, classes=["bird", "cat", "dog"], field="data.val_path")
    assert records.labels.tolist() == [2, 0] and records.class_names == ["bird", "cat", "dog"]
    with pytest.raises(UsageError, match=r"val\.csv:3: label: class 'bird' is not among the train classes"):
        manifest_records(val, {}, classes=["cat", "dog"], field="data.val_path")


@pytest.mark.parametrize("name, text, message", [
    ("m.csv", "file,label\nimages/img0.png,a\n", r"m\.csv:1: path: no such column in the header \(columns: file"),
    ("m.csv", "path,label\nimages/img0.png,a\nimages/x.jpg,b\n", r"m\.csv:3: path: images/x\.jpg does not exist"),
    ("m.csv", "path,label\nimages/img0.png,a\nimages/img0.png,\n", r"m\.csv:3: label: empty label"),
    ("m.csv", "path,label\n", r"m\.csv: data\.path: the manifest has no rows"),
    ("m.csv", "path,label\nimages/img0.png,3\nimages/img0.png,cat\n",
     r"m\.csv:2: label: '3' is an integer but .*m\.csv:3: label is the class name 'cat'"),
    ("m.jsonl", '{"path": "images/img0.png", "label": 1}\n{"path": "images/img0.png", "label": 1,\n',
     r"m\.jsonl:2: not valid JSON"),
    ("m.jsonl", '{"path": "images/img0.png"}\n', r"m\.jsonl:1: label: missing"),
    ("m.jsonl", '{"path": "images/img0.png", "label": null}\n', r"m\.jsonl:1: label: empty label"),
    ("m.jsonl", '{"path": "images/img0.png", "label": -1}\n', r"m\.jsonl:1: label: -1 is negative"),
    ("m.txt", "path,label\n", r"m\.txt: data\.path: a manifest is a \.csv"),
])
def test_a_bad_manifest_is_refused_naming_the_file_line_and_column(tmp_path, name, text, message):
    write_images(tmp_path / "images", 1)
    (tmp_path / name).write_text(text)
    with pytest.raises(UsageError, match=message):
        manifest_records(tmp_path / name, {})


def test_an_unknown_columns_key_is_refused_by_name(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", "path,label", [])
    with pytest.raises(UsageError, match=r"data\.columns\.img: not a column of source 'manifest'"):
        manifest_records(manifest, {"img": "file"})


# --- Hugging Face datasets on disk ----------------------------------------------------------------------------

def hf_dataset(seeds: list[int], labels: list, class_names: list[str] | None = None):
    import datasets

    features = {"image": datasets.Image(),
                "label": datasets.ClassLabel(names=class_names) if class_names else None}
    table = {"image": [Image.fromarray(pixels(s)) for s in seeds], "label": labels}
    dataset = datasets.Dataset.from_dict(table)
    dataset = dataset.cast_column("image", features["image"])
    return dataset.cast_column("label", features["label"]) if class_names else dataset


@pytest.fixture
def no_image_decoding(monkeypatch):
    """Any decode of the Image feature fails: what passes read only bytes until PIL opens them."""
    import datasets

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded by datasets")

    monkeypatch.setattr(datasets.Image, "decode_example", refuse)


def test_a_saved_dataset_gives_classlabel_names_and_the_source_pixels_without_decoding(tmp_path, no_image_decoding):
    hf_dataset([0, 1, 2], [1, 0, 1], ["cat", "dog"]).save_to_disk(str(tmp_path / "ds"))
    records = hf_records(tmp_path / "ds", {})
    assert len(records) == 3 and records.class_names == ["cat", "dog"] and records.labels.tolist() == [1, 0, 1]
    assert records.name(2) == f"{tmp_path / 'ds'}: row 2"
    assert_faithful(records, [0, 1, 2])


def test_parquet_and_arrow_files_and_renamed_columns_with_string_labels(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    dataset = hf_dataset([3, 4, 5], ["zebra", "ant", "ant"]).rename_columns({"image": "img", "label": "kind"})
    (tmp_path / "parquet").mkdir()
    dataset.to_parquet(str(tmp_path / "parquet" / "part0.parquet"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    for path in (tmp_path / "parquet" / "part0.parquet", tmp_path / "parquet", arrow):
        records = hf_records(path, {"image": "img", "label": "kind"})
        assert records.class_names == ["ant", "zebra"] and records.labels.tolist() == [1, 0, 0], path
        assert_faithful(records, [3, 4, 5])


def test_a_dataset_dict_trains_on_train_and_hands_its_other_splits_numbered_alike(tmp_path):
    import datasets

    splits = datasets.DatasetDict({"train": hf_dataset([0, 1], [0, 1], ["cat", "dog"]),
                                   "validation": hf_dataset([2], [1], ["cat", "dog"])})
    splits.save_to_disk(str(tmp_path / "dd"))
    train = hf_records(tmp_path / "dd", {})
    assert train.labels.tolist() == [0, 1] and train.class_names == ["cat", "dog"]
    val = hf_split(tmp_path / "dd", "validation", {}, classes=train.class_names)
    assert val.labels.tolist() == [1] and val.class_names == ["cat", "dog"]
    assert_faithful(val, [2])
    assert hf_split(tmp_path / "dd", "test", {}) is None
    hf_dataset([0], [0], ["cat"]).save_to_disk(str(tmp_path / "plain"))
    assert hf_split(tmp_path / "plain", "validation", {}) is None


def test_a_val_split_with_a_class_the_train_split_lacks_is_refused_naming_the_row(tmp_path):
    hf_dataset([0, 1], [0, 1], ["bird", "cat"]).save_to_disk(str(tmp_path / "val"))
    records = hf_records(tmp_path / "val", {}, classes=["ant", "bird", "cat"])
    assert records.labels.tolist() == [1, 2]
    with pytest.raises(UsageError, match=r"val: row 1: label: class 'cat' is not among the train classes"):
        hf_records(tmp_path / "val", {}, classes=["bird"], field="data.val_path")


def test_an_image_column_of_file_paths_resolves_them_beside_the_parquet_file(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    write_images(tmp_path / "data" / "images", 2)
    table = datasets.Dataset.from_dict({"image": ["images/img0.png", "images/img1.png"], "label": [1, 0]})
    table.to_parquet(str(tmp_path / "data" / "train.parquet"))
    records = hf_records(tmp_path / "data" / "train.parquet", {})
    assert records.labels.tolist() == [1, 0] and records.class_names == ["0", "1"]
    assert_faithful(records, [0, 1])


def test_bad_hf_inputs_are_refused_naming_the_file_and_column(tmp_path):
    import datasets

    datasets.DatasetDict({"test": hf_dataset([0], [0], ["a"])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UsageError, match=r"dd: data\.path: the DatasetDict has no 'train' split \(it has test\)"):
        hf_records(tmp_path / "dd", {})
    hf_dataset([0], [0], ["a"]).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(UsageError, match=r"ds: pixels: no such column \(columns: image, label\)"):
        hf_records(tmp_path / "ds", {"image": "pixels"})
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(UsageError, match=r"bad\.parquet: data\.path: not a readable Hugging Face dataset"):
        hf_records(tmp_path / "bad.parquet", {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"empty: data\.path: an hf source is a folder written by save_to_disk"):
        hf_records(tmp_path / "empty", {})


# --- webdataset shards ----------------------------------------------------------------------------------------

def write_shards(folder: Path, samples: list[dict], maxcount: int = 3) -> None:
    import webdataset

    folder.mkdir(parents=True, exist_ok=True)
    with webdataset.ShardWriter(str(folder / "train-%06d.tar"), maxcount=maxcount, verbose=0) as sink:
        for sample in samples:
            sink.write(sample)


def test_shards_by_folder_pattern_or_file_index_every_image_by_offset(tmp_path):
    samples = [{"__key__": f"s{i:03d}", "png": png_bytes(i), "cls": i % 2} for i in range(7)]
    write_shards(tmp_path / "shards", samples)
    assert len(list((tmp_path / "shards").glob("*.tar"))) == 3
    for path in (tmp_path / "shards", tmp_path / "shards" / "train-{000000..000002}.tar"):
        records = shard_records(path, {})
        assert len(records) == 7 and records.class_names == ["0", "1"]
        assert records.labels.tolist() == [0, 1, 0, 1, 0, 1, 0]
        assert records.name(4) == f"{tmp_path / 'shards' / 'train-000001.tar'}: s004.png"
        assert_faithful(records, list(range(7)))
    with tarfile.open(tmp_path / "shards" / "train-000002.tar", "a") as tar:  # webdataset skips __meta__/ members
        info = tarfile.TarInfo("__meta__/info.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    single = shard_records(tmp_path / "shards" / "train-000002.tar", {})
    assert len(single) == 1 and np.array_equal(np.asarray(single.open(0)), pixels(6))


def test_shard_labels_from_a_json_member_and_a_chosen_image_extension(tmp_path):
    samples = [{"__key__": f"k{i}", "jpg": b"a thumbnail", "photo.png": png_bytes(i),
                "json": json.dumps({"label": name}).encode()} for i, name in enumerate(["owl", "cat", "owl"])]
    write_shards(tmp_path / "shards", samples, maxcount=10)
    records = shard_records(tmp_path / "shards", {"image": "photo.png", "label": "json"})
    assert records.class_names == ["cat", "owl"] and records.labels.tolist() == [1, 0, 1]
    assert_faithful(records, [0, 1, 2])
    val = shard_records(tmp_path / "shards", {"image": "photo.png", "label": "json"}, classes=["cat", "dog", "owl"])
    assert val.labels.tolist() == [2, 0, 2]


def test_bad_shards_are_refused_naming_the_shard_and_key(tmp_path):
    import webdataset

    with webdataset.TarWriter(str(tmp_path / "nolabel.tar")) as sink:
        sink.write({"__key__": "a", "png": png_bytes(0), "cls": 0})
        sink.write({"__key__": "b", "png": png_bytes(1)})
    with pytest.raises(UsageError, match=r"nolabel\.tar: b: no label \(it has \.png; looked for \.cls\)"):
        shard_records(tmp_path / "nolabel.tar", {})
    with webdataset.TarWriter(str(tmp_path / "noimage.tar")) as sink:
        sink.write({"__key__": "c", "txt": "hello", "cls": 0})
    with pytest.raises(UsageError, match=r"noimage\.tar: c: no image \(it has \.cls, \.txt; looked for \.jpg"):
        shard_records(tmp_path / "noimage.tar", {})
    with pytest.raises(UsageError, match=r"train-\{0\.\.3\}\.tar: data\.path: no shard matches the pattern"):
        shard_records(tmp_path / "train-{0..3}.tar", {})
    with webdataset.TarWriter(str(tmp_path / "twice.tar")) as sink:
        sink.write({"__key__": "a", "png": png_bytes(0), "cls": 0})
        sink.write({"__key__": "a", "png": png_bytes(1), "cls": 1})
    with pytest.raises(UsageError, match=r"twice\.tar: a\.cls: key 'a' already has a \.cls member"):
        shard_records(tmp_path / "twice.tar", {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"empty: data\.val_path: no \.tar shards in the folder"):
        shard_records(tmp_path / "empty", {}, field="data.val_path")
    (tmp_path / "notes.tar").write_text("this is not a tar file, just text " * 20)
    with pytest.raises(UsageError, match=r"notes\.tar: data\.path: not a readable tar file"):
        shard_records(tmp_path / "notes.tar", {})
    with webdataset.TarWriter(str(tmp_path / "packed.tar"), compress=True) as sink:
        sink.write({"__key__": "a", "png": png_bytes(0), "cls": 0})
    with pytest.raises(UsageError, match=r"packed\.tar: data\.path: a gzip-compressed tar"):
        shard_records(tmp_path / "packed.tar", {})


# --- a mapped .npz --------------------------------------------------------------------------------------------

def test_npz_x_is_memory_mapped_when_stored_and_read_when_compressed(tmp_path):
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    y = np.array([0, 1])
    np.savez(tmp_path / "c_order.npz", x=x, y=y)
    np.savez(tmp_path / "f_order.npz", x=np.asfortranarray(x), y=y)
    np.savez_compressed(tmp_path / "packed.npz", x=x, y=y)
    for name in ("c_order", "f_order"):
        arrays = npz_arrays(tmp_path / f"{name}.npz")
        assert isinstance(arrays["x"], np.memmap), name
        assert np.array_equal(arrays["x"], np.load(tmp_path / f"{name}.npz")["x"]) and arrays["x"].dtype == x.dtype
        assert np.array_equal(arrays["y"], y) and not isinstance(arrays["y"], np.memmap)
    assert npz_arrays(tmp_path / "f_order.npz")["x"].flags.f_contiguous
    packed = npz_arrays(tmp_path / "packed.npz")
    assert type(packed["x"]) is np.ndarray and np.array_equal(packed["x"], x)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(UsageError, match=r"text\.npz: not an \.npz file"):
        npz_arrays(tmp_path / "text.npz")
