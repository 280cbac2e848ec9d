"""Webdataset tar shards on local disk as Records, with random access through an index of offsets.

Webdataset reads shards front to back; training here shuffles and splits by index, so
`shard_records` reads every tar header once (no image data), keeps each image's (shard, offset,
size), and `open(i)` seeks straight to those bytes. Members are grouped into examples by key, the
member name up to the first dot of its file name (webdataset's rule), so `a/b.c.jpg` and
`a/b.c.cls` are example `a/b` with extensions `c.jpg` and `c.cls`.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np

from compress.core.errors import UsageError
from compress.data.manifest import column_names, number_labels
from compress.data.records import Records

SHARD_DEFAULTS = {"image": "jpg;jpeg;png;webp", "label": "cls"}
KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset.tariterators.base_plus_ext
METADATA = re.compile(r"__[^/]*__($|/)")  # members webdataset skips (its tar_file_iterator's skip_meta)
COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZ": "bzip2", b"\xfd7": "xz", b"\x28\xb5": "zstd"}


class ShardRecords(Records):
    """Images at known byte ranges of tar files. Holds paths, never an open file, so it pickles for workers."""

    def __init__(self, shards: list[str], shard_of: np.ndarray, offsets: np.ndarray, sizes: np.ndarray,
                 members: list[str], labels: np.ndarray, class_names: list[str]):
        self.shards, self.shard_of, self.offsets, self.sizes, self.members = shards, shard_of, offsets, sizes, members
        self.labels, self.class_names = labels, class_names

    def name(self, index: int) -> str:
        return f"{self.shards[self.shard_of[index]]}: {self.members[index]}"

    def _open(self, index: int):
        from PIL import Image

        with open(self.shards[self.shard_of[index]], "rb") as shard:  # opened per call: nothing to share across fork
            shard.seek(int(self.offsets[index]))
            data = shard.read(int(self.sizes[index]))
        return Image.open(io.BytesIO(data))


def shard_records(path: Path, columns: dict[str, str] | None = None, classes: list[str] | None = None,
                  field: str = "data.path") -> ShardRecords:
    """Every example of the shards at `path`: a .tar file, a folder of them, or a brace pattern.

    `data.columns.image` is the image extension (alternatives split by ';', the first present
    wins) and `data.columns.label` the label's: text (`cls`: an integer or a class name) or JSON
    with a "label" field (`json`).
    """
    names = column_names(columns, SHARD_DEFAULTS, "webdataset")
    image_extensions = [e.strip().lower().lstrip(".") for e in names["image"].split(";") if e.strip()]
    label_extension = names["label"].strip().lower().lstrip(".")
    shards = shard_files(path, field)
    shard_of, offsets, sizes, members, raw_labels, label_names = [], [], [], [], [], []
    for number, shard in enumerate(shards):
        for member, label, label_name in _shard_examples(shard, image_extensions, label_extension, field):
            shard_of.append(number)
            offsets.append(member.offset_data)
            sizes.append(member.size)
            members.append(member.name)
            raw_labels.append(label)
            label_names.append(label_name)
    if not members:
        raise UsageError(f"{path}: {field}: the shards hold no examples")
    labels, class_names = number_labels(raw_labels, classes, lambda i: label_names[i])
    return ShardRecords([str(s) for s in shards], np.asarray(shard_of, dtype=np.int32),
                        np.asarray(offsets, dtype=np.int64), np.asarray(sizes, dtype=np.int64), members,
                        labels, class_names)


def shard_files(path: Path, field: str = "data.path") -> list[Path]:
    """The shards `path` names, in order; a pattern naming a missing shard is refused naming it."""
    text = str(path)
    if "{" in text:
        from braceexpand import braceexpand

        expanded = [Path(p) for p in braceexpand(text)]
        missing = [p for p in expanded if not p.is_file()]
        if len(missing) == len(expanded):
            raise UsageError(f"{text}: {field}: no shard matches the pattern")
        if missing:
            raise UsageError(f"{missing[0]}: {field}: no such shard ({len(missing)} of the {len(expanded)} "
                             f"that {text} names are missing)")
        return expanded
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".tar" and p.is_file())
        if not found:
            raise UsageError(f"{path}: {field}: no .tar shards in the folder")
        return found
    if not path.is_file():
        raise UsageError(f"{path}: {field}: no such shard (a .tar file, a folder of them, or a pattern like "
                         "train-{000000..000009}.tar)")
    return [path]


def _shard_examples(shard: Path, image_extensions: list[str], label_extension: str, field: str):
    """(image TarInfo, raw label, where the label is) for every key of one shard, in the shard's order."""
    with shard.open("rb") as stream:
        kind = COMPRESSED_MAGIC.get(stream.read(2))
    if kind:
        raise UsageError(f"{shard}: {field}: a {kind}-compressed tar; random access needs plain .tar shards "
                         "(decompress it, or write shards without compression)")
    try:
        with tarfile.open(shard, mode="r:") as tar:
            groups = _group_by_key(tar, shard)
            for key, members in groups.items():
                image = next((members[e] for e in image_extensions if e in members), None)
                if image is None:
                    raise UsageError(f"{shard}: {key}: no image (it has {_extensions(members)}; looked for "
                                     f"{', '.join('.' + e for e in image_extensions)}); set data.columns.image")
                if label_extension not in members:
                    raise UsageError(f"{shard}: {key}: no label (it has {_extensions(members)}; looked for "
                                     f".{label_extension}); set data.columns.label")
                where = f"{shard}: {key}.{label_extension}"
                data = tar.extractfile(members[label_extension]).read()
                yield image, _label_value(data, label_extension, where), where
    except (tarfile.TarError, EOFError) as error:
        raise UsageError(f"{shard}: {field}: not a readable tar file ({error})") from None


def _group_by_key(tar: tarfile.TarFile, shard: Path) -> dict[str, dict[str, tarfile.TarInfo]]:
    """{key: {extension: member}}; iterating a plain tar reads each header and seeks past the data."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    for member in tar:
        if not member.isfile() or METADATA.match(member.name):
            continue
        match = KEY_AND_EXTENSION.match(member.name)
        if not match:
            continue
        key, extension = match.group(1), match.group(2).lower()
        group = groups.setdefault(key, {})
        if extension in group:
            raise UsageError(f"{shard}: {member.name}: key '{key}' already has a .{extension} member "
                             f"({group[extension].name}); each key is one example")
        group[extension] = member
    return groups


def _extensions(members: dict[str, tarfile.TarInfo]) -> str:
    return ", ".join("." + e for e in sorted(members))


def _label_value(data: bytes, extension: str, where: str):
    """The label a member holds: its text, or the "label" field of a JSON member."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{where}: not UTF-8 text") from None
    if extension != "json" and not extension.endswith(".json"):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{where}: not valid JSON ({error.msg})") from None
    if not isinstance(value, dict) or "label" not in value:
        raise UsageError(f'{where}: no "label" field')
    return value["label"]
