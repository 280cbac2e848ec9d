"""An image data set's geometry (channels, size, classes) from the config and file headers alone."""

from __future__ import annotations

import zipfile

import numpy as np

from compress.config import DataConfig
from compress.tasks.task import Geometry


def declared_geometry(data: DataConfig) -> Geometry:
    """Cheap enough for every validate: no image is decoded."""
    if data.source == "digits":
        return Geometry(1, 8, 10)
    if data.streams:  # image files: their channels show in the headers unless the config converts them
        return Geometry(1 if data.grayscale else data.channels, data.image_size, None)
    if data.source == "npz" and data.path is not None:
        return _npz_geometry(data.path)
    return Geometry()


def _npz_geometry(path) -> Geometry:
    """x's shape from its .npy header, the classes from y (small) or class_names; as compress.data reads them."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("x.npy") as fh:
            version = np.lib.format.read_magic(fh)
            npy = np.lib.format
            shape = (npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0)(fh)[0]
        arrays = np.load(path, allow_pickle=False)
        classes = len(arrays["class_names"]) if "class_names" in arrays.files else int(arrays["y"].max()) + 1
    except Exception:  # the data stage names what is wrong with the file
        return Geometry()
    if len(shape) == 3:
        return Geometry(1, shape[1], classes)
    if len(shape) != 4:
        return Geometry()
    channels_last = shape[-1] in (1, 3) and shape[1] not in (1, 3)
    return Geometry(shape[-1], shape[1], classes) if channels_last else Geometry(shape[1], shape[2], classes)
