"""Write a small ImageFolder of RGB JPEGs (train/ and val/, one sub-folder per class), offline.

The pictures are patches of the two photos scikit-learn ships (china.jpg, a temple, and
flower.jpg), so nothing is downloaded. Five classes that a network can tell apart by content,
colour or texture, not by one pixel statistic alone:

    temple   a patch of china.jpg as it is
    flower   a patch of flower.jpg as it is
    sepia    a patch of either photo, toned sepia
    blurred  a patch of either photo, Gaussian-blurred
    striped  a patch of either photo with faint diagonal stripes over it

Each patch is cut at a random place and scale, flipped at random, resized to --size pixels and
given a random brightness and contrast; the same --seed gives the same files.

    python examples/imagefolder/make_images.py [--out examples/imagefolder/images] [--per-class 60]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

HERE = Path(__file__).resolve().parent
CLASSES = ("blurred", "flower", "sepia", "striped", "temple")
# A photo is 640 x 427: patch sides between these fractions of its height.
PATCH_SIDE = (0.25, 0.75)


def photos() -> dict[str, Image.Image]:
    """scikit-learn's two sample photos, from its package data (no download)."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images()
    return {Path(name).stem: Image.fromarray(array) for name, array in zip(images.filenames, images.images)}


def random_patch(photo: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """A square cut of `photo` at a random place and scale, maybe mirrored, resized to `size`."""
    width, height = photo.size
    side = int(height * rng.uniform(*PATCH_SIDE))
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    patch = photo.crop((left, top, left + side, top + side))
    if rng.random() < 0.5:
        patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    patch = patch.resize((size, size), Image.Resampling.BILINEAR)
    # brightness and contrast vary per image, so no class is told by its mean colour alone
    pixels = np.asarray(patch, dtype=np.float32)
    pixels = (pixels - pixels.mean()) * rng.uniform(0.7, 1.2) + pixels.mean() * rng.uniform(0.75, 1.2)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def sepia(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brown tones of the patch's brightness, blended over its colours at a random strength."""
    gray = np.asarray(image.convert("L"), dtype=np.float32)[..., None]
    toned = gray * np.array([1.07, 0.74, 0.43], dtype=np.float32)
    strength = rng.uniform(0.6, 1.0)
    pixels = strength * toned + (1 - strength) * np.asarray(image, dtype=np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def blurred(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1.0, 2.5)) * image.width / 96))


def striped(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Diagonal light and dark bands blended over the photo, at a random period and phase."""
    size = image.width
    period = rng.uniform(0.08, 0.16) * size
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    bands = np.sin(2 * np.pi * (xs + ys * rng.choice([-1, 1])) / period + rng.uniform(0, 2 * np.pi))
    pixels = np.asarray(image, dtype=np.float32) + rng.uniform(15, 35) * bands[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def as_is(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image


# class -> (which photos it cuts from, what it does to the patch)
RECIPES: dict[str, tuple[tuple[str, ...], Callable]] = {
    "temple": (("china",), as_is),
    "flower": (("flower",), as_is),
    "sepia": (("china", "flower"), sepia),
    "blurred": (("china", "flower"), blurred),
    "striped": (("china", "flower"), striped),
}


def write_split(folder: Path, count: int, size: int, sources: dict[str, Image.Image], rng: np.random.Generator) -> None:
    for name in CLASSES:
        photo_names, change = RECIPES[name]
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            photo = sources[photo_names[int(rng.integers(len(photo_names)))]]
            image = change(random_patch(photo, size, rng), rng)
            image.save(folder / name / f"{name}_{index:04d}.jpg", quality=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "images", help="default: images/ beside this script")
    parser.add_argument("--per-class", type=int, default=60, help="train images per class (val gets a quarter)")
    parser.add_argument("--size", type=int, default=96, help="side of every image in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.per_class < 1 or args.size < 8:
        parser.error("--per-class must be at least 1 and --size at least 8")
    for split in ("train", "val"):  # a rerun with other settings leaves no stale files behind
        shutil.rmtree(args.out / split, ignore_errors=True)
    rng = np.random.default_rng(args.seed)
    sources = photos()
    val_count = max(1, args.per_class // 4)
    write_split(args.out / "train", args.per_class, args.size, sources, rng)
    write_split(args.out / "val", val_count, args.size, sources, rng)
    print(f"wrote {len(CLASSES)} classes x ({args.per_class} train + {val_count} val) JPEGs of "
          f"{args.size}x{args.size} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
