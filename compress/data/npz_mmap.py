"""The arrays of an .npz, with `x` memory-mapped when it is stored uncompressed.

`np.load(mmap_mode=...)` ignores mmap_mode for an .npz, so a 20 GB `x` would be read whole. A
member that np.savez stored (not savez_compressed) is a plain .npy at a fixed offset of the zip,
which np.memmap can map: find it from the zip's local file header and the .npy header.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

from compress.core.errors import UsageError

MAPPED = "x"
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # zip local file header, 30 bytes
LOCAL_SIGNATURE = b"PK\x03\x04"


def npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """{name: array} of the .npz at `path`; `x` is an np.memmap when it can be, the rest are read."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
    except (zipfile.BadZipFile, OSError) as error:
        raise UsageError(f"{path}: not an .npz file ({error})") from None
    arrays: dict[str, np.ndarray] = {}
    with np.load(path, allow_pickle=False) as loaded:
        for name in loaded.files:
            info = members.get(f"{name}.npy")
            mapped = _mapped(path, info) if name == MAPPED and info is not None else None
            arrays[name] = mapped if mapped is not None else _read(loaded, name, path)
    return arrays


def _read(loaded, name: str, path: Path) -> np.ndarray:
    try:
        return loaded[name]
    except ValueError as error:  # an object array needs pickle, which data files never get
        raise UsageError(f"{path}: {name}: cannot be read ({error})") from None


def _mapped(path: Path, info: zipfile.ZipInfo) -> np.memmap | None:
    """`info`'s array mapped in place, or None when it is compressed or not a plain numeric .npy."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # deflated or encrypted
        return None
    with open(path, "rb") as stream:
        stream.seek(info.header_offset)
        header = stream.read(LOCAL_HEADER.size)
        if len(header) < LOCAL_HEADER.size or header[:4] != LOCAL_SIGNATURE:
            return None
        fields = LOCAL_HEADER.unpack(header)
        name_length, extra_length = fields[9], fields[10]
        stream.seek(info.header_offset + LOCAL_HEADER.size + name_length + extra_length)
        array_header = _npy_header(stream)
        if array_header is None:
            return None
        shape, fortran_order, dtype = array_header
        offset = stream.tell()
    if dtype.hasobject or int(np.prod(shape)) == 0:
        return None  # objects need pickle; an empty array has nothing to map
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C")


def _npy_header(stream) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """(shape, fortran_order, dtype) of the .npy starting at the stream's position; None if not one we map."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(stream)
        if version == (1, 0):
            return npy.read_array_header_1_0(stream)
        if version == (2, 0):
            return npy.read_array_header_2_0(stream)
    except ValueError:
        return None
    return None  # version 3.0 (utf-8 field names) is read normally
