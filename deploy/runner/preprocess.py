"""The preprocessing a bundle records, applied on the device to raw inputs (numpy, and Pillow for images).

The host records its evaluation preprocessing as data in manifest.json (`preprocessing`), so the
device repeats exactly the steps the host measured with: (x - mean) / std per channel of an NCHW
float32 batch, and for bundles of image data first the image steps of `preprocessing.image`
(compress/data/transforms.py's eval_spec). Those mirror torchvision.transforms.v2 on PIL images,
which calls PIL's own resize, so the device computes the host's pixels without torch.
"""

from __future__ import annotations

import os

try:  # on the host: the deploy.runner package
    from . import runner
except ImportError:  # on the device: loaded by runner.py from the release folder
    import runner

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def normalize(x, manifest: dict):
    """(x - mean) / std per channel of a float32 NCHW batch, as torchvision's Normalize computes it."""
    import numpy as np

    pre = manifest["preprocessing"]
    mean = np.asarray(pre["mean"], dtype=np.float32)[None, :, None, None]
    std = np.asarray(pre["std"], dtype=np.float32)[None, :, None, None]
    return (x - mean) / std


def preprocess(x, manifest: dict):
    """Raw inputs (N, C, H, W), or one (C, H, W), to the normalised float32 batch the model takes."""
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    if x.ndim == len(manifest["input"]["shape"]) - 1:
        x = x[None]
    return normalize(x, manifest)


def is_image(path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def image_spec(manifest: dict) -> dict:
    """The recorded image steps; a bundle made from arrays has none and takes .npy inputs only."""
    spec = manifest["preprocessing"].get("image")
    if spec is None:
        raise runner.RunnerError("this bundle was made from array data, not images: give it a .npy of raw inputs "
                                 "(N,C,H,W)")
    interpolation = spec.get("interpolation", "bilinear")
    if interpolation != "bilinear":
        raise runner.RunnerError(f"manifest.json: preprocessing.image.interpolation: {interpolation} is not one this "
                                 "runner repeats (bilinear); deploy the bundle again with this toolchain's runner")
    return spec


def preprocess_images(paths, manifest: dict):
    """Image files to the normalised (N, C, H, W) float32 batch the model takes, the host's eval steps exactly."""
    import numpy as np

    spec = image_spec(manifest)
    pixels = np.stack([image_pixels(path, spec) for path in paths])
    scaled = pixels.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1.0 / 255.0)
    return normalize(scaled, manifest)


def image_pixels(path, spec: dict):
    """One file's uint8 (H, W, C) pixels after the mode, resize and centre crop of the spec."""
    import numpy as np

    image = open_image(path, spec["mode"])
    if spec.get("resize") is not None:
        image = resize(image, spec["resize"])
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if spec.get("crop") is not None:
        pixels = center_crop(pixels, spec["crop"])
    expected = spec.get("size")
    if expected is not None and list(pixels.shape[:2]) != list(expected):
        hint = "" if spec.get("resize") or spec.get("crop") else " (this bundle resizes none: give images of that size)"
        raise runner.RunnerError(f"{path}: {pixels.shape[1]}x{pixels.shape[0]} pixels where the model takes "
                                 f"{expected[1]}x{expected[0]}{hint}")
    return pixels


def open_image(path, mode: str):
    """The decoded image in `mode` ("RGB" or "L"), converted by PIL only when it differs, as the host does."""
    Image = runner.device_package("PIL.Image", "Pillow", "reads image inputs")
    if not os.path.isfile(str(path)):
        raise runner.RunnerError(f"{path}: not found")
    unreadable = (OSError, ValueError, SyntaxError, EOFError, getattr(Image, "DecompressionBombError", OSError))
    try:
        with Image.open(path) as image:  # closed here: a long list of files holds no handles
            image.load()
            return image.copy() if image.mode == mode else image.convert(mode)
    except unreadable as error:
        raise runner.RunnerError(f"{path}: not a readable image ({error or type(error).__name__})") from None


def resized_size(height: int, width: int, size) -> tuple:
    """(h, w) after torchvision's Resize: [h, w] exactly; an int (or [s]) puts the shorter side at s, keeping aspect."""
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    short_target = int(size[0] if isinstance(size, (list, tuple)) else size)
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(short_target * long / short)
    return (new_long, short_target) if width <= height else (short_target, new_long)


def resize(image, size):
    """PIL's bilinear resize with torchvision's arguments (no box, no reducing_gap); the same size is left alone."""
    from PIL import Image

    height, width = resized_size(image.height, image.width, size)
    if (height, width) == (image.height, image.width):
        return image
    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    return image.resize((width, height), resample=bilinear)


def center_crop(pixels, crop):
    """torchvision's CenterCrop of (H, W, C) pixels: zero padding where the crop is larger, then the centre."""
    import numpy as np

    crop_h, crop_w = (int(crop), int(crop)) if isinstance(crop, int) else (int(crop[0]), int(crop[-1]))
    height, width = pixels.shape[:2]
    if crop_h > height or crop_w > width:
        pad_h = max(crop_h - height, 0)
        pad_w = max(crop_w - width, 0)
        pixels = np.pad(pixels, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
        height, width = pixels.shape[:2]
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return pixels[top:top + crop_h, left:left + crop_w]


# --- the task's part of inference (deploy/runner/inference.py dispatches here for image classifiers) ---

def image_inputs(inputs: list, preprocessed: bool) -> bool:
    """True for image files, False for one .npy; anything else, or a mix, is refused naming the file."""
    return runner.raw_or_array(inputs, is_image, ".npy", f"the runner takes (one .npy, or image files: "
                               f"{' '.join(IMAGE_SUFFIXES)})", "image files", "a .npy of normalised inputs",
                               preprocessed)


def read_inputs(release, manifest: dict, inputs: list, preprocessed: bool, names: list):
    """(where each input came from, or None for the rows of one .npy; the model feeds, in chunks)."""
    import numpy as np

    if image_inputs(inputs, preprocessed):
        return [{"file": str(path)} for path in inputs], [preprocess_images(inputs, manifest)]
    x = np.load(inputs[0], allow_pickle=False)
    return None, [x.astype(np.float32) if preprocessed else preprocess(x, manifest)]


def sample_inputs(sample: dict, names: list):
    """The val sample's feed: its preprocessed `x` batch."""
    return sample["x"]


def check_sample(release, manifest: dict, sample: dict, names: list):
    """Nothing to repeat exactly beyond the recorded steps, which the val sample's accuracy already checks."""
    return None
