"""An offline detection data set: scikit-learn's 8x8 digits pasted on noisy canvases, written as COCO.

Nothing is downloaded (load_digits ships with scikit-learn), yet the task is not trivial: digits vary in
size (14 to 40 px), colour and place, backgrounds carry a gradient and noise, some canvases are empty, and
val/test digits are drawn from handwriting samples that training never saw (scikit-learn's 1,797 digits are
split 70/15/15 before any canvas is drawn), so a detector has to generalize, not memorize glyphs.
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np

from compress.core.fileio import write_json

DEFAULT_COUNTS = MappingProxyType({"train": 600, "val": 150, "test": 150})
DIGIT_POOLS = {"train": (0.0, 0.70), "val": (0.70, 0.85), "test": (0.85, 1.0)}  # shares of sklearn's digits
SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}
DIGIT_SIDE = (14, 40)  # pasted digit size in pixels, inclusive
MAX_DIGITS, EMPTY_SHARE = 4, 0.1
PLACEMENT_TRIES = 10
INK = 0.25  # a pixel whose upscaled intensity (0..1) reaches this is ink: the box is the tight box around it


def write_digits_coco(out_dir: Path, counts: Mapping[str, int] = DEFAULT_COUNTS, canvas: int = 128,
                      seed: int = 0) -> dict[str, Path]:
    """Write images/<split>_<n>.png and <split>.json (COCO, categories 1..10 named "0".."9") under `out_dir`;
    returns {split: json path}. The same seed gives the same files."""
    from sklearn.datasets import load_digits

    unknown = set(counts) - set(DIGIT_POOLS)
    if unknown:
        raise ValueError(f"splits {sorted(unknown)}: only {', '.join(DIGIT_POOLS)} are known")
    if canvas < 2 * DIGIT_SIDE[1]:
        raise ValueError(f"canvas {canvas} is too small for digits up to {DIGIT_SIDE[1]} px")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    glyphs, targets = digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(targets))
    written = {}
    for split, count in counts.items():
        low, high = DIGIT_POOLS[split]
        pool = order[int(low * len(order)):int(high * len(order))]
        rng = np.random.default_rng([seed, SPLIT_STREAM[split]])
        written[split] = _write_split(out_dir, split, count, canvas, glyphs[pool], targets[pool], rng)
    return written


def _write_split(out_dir: Path, split: str, count: int, canvas: int, glyphs: np.ndarray, targets: np.ndarray,
                 rng: np.random.Generator) -> Path:
    from PIL import Image

    images, annotations = [], []
    for number in range(count):
        pixels, boxes, labels = draw_canvas(canvas, glyphs, targets, rng)
        name = f"images/{split}_{number}.png"
        Image.fromarray(pixels).save(out_dir / name, compress_level=1)
        image_id = number + 1
        images.append({"id": image_id, "file_name": name, "width": canvas, "height": canvas})
        for (x0, y0, x1, y1), label in zip(boxes, labels):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    categories = [{"id": digit + 1, "name": str(digit)} for digit in range(10)]
    path = out_dir / f"{split}.json"
    write_json(path, {"images": images, "annotations": annotations, "categories": categories})
    return path


def draw_canvas(canvas: int, glyphs: np.ndarray, targets: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int, int, int]], list[int]]:
    """(uint8 [canvas, canvas, 3] RGB, xyxy boxes of inked pixels, digit labels): 0 to MAX_DIGITS digits on a
    background, none overlapping another (their pasted squares do not touch, so neither do their boxes)."""
    pixels = _background(canvas, rng)
    wanted = 0 if rng.random() < EMPTY_SHARE else int(rng.integers(1, MAX_DIGITS + 1))
    taken: list[tuple[int, int, int, int]] = []
    boxes, labels = [], []
    for _ in range(wanted):
        side = int(rng.integers(DIGIT_SIDE[0], DIGIT_SIDE[1] + 1))
        place = _free_place(canvas, side, taken, rng)
        if place is None:
            continue  # the canvas is too crowded for this size: fewer digits, never overlapping ones
        which = int(rng.integers(len(targets)))
        box = _paste(pixels, glyphs[which], place, side, _bright_colour(rng))
        if box is not None:
            taken.append((place[0], place[1], place[0] + side, place[1] + side))
            boxes.append(box)
            labels.append(int(targets[which]))
    return np.clip(pixels, 0, 255).astype(np.uint8), boxes, labels


def _background(canvas: int, rng: np.random.Generator) -> np.ndarray:
    """Dark grey with a linear gradient in a random direction and per-pixel noise, so that "not black" is not
    "a digit"."""
    ramp = np.linspace(-1.0, 1.0, canvas, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    base = rng.uniform(25, 70) + rng.uniform(5, 30) * gradient
    tint = rng.uniform(-8, 8, size=3).astype(np.float32)
    noise = rng.standard_normal((canvas, canvas, 3), dtype=np.float32) * np.float32(rng.uniform(3, 12))
    return base[..., None] + tint + noise


def _free_place(canvas: int, side: int, taken: list[tuple[int, int, int, int]],
                rng: np.random.Generator) -> tuple[int, int] | None:
    for _ in range(PLACEMENT_TRIES):
        left, top = (int(v) for v in rng.integers(0, canvas - side + 1, size=2))
        if all(left >= x1 or left + side <= x0 or top >= y1 or top + side <= y0 for x0, y0, x1, y1 in taken):
            return left, top
    return None


def _bright_colour(rng: np.random.Generator) -> np.ndarray:
    red, green, blue = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.8, 1.0))
    return np.array([red, green, blue], np.float32) * 255.0


def _paste(pixels: np.ndarray, glyph: np.ndarray, place: tuple[int, int], side: int,
           colour: np.ndarray) -> tuple[int, int, int, int] | None:
    """Blend the glyph, upscaled to side x side, in `colour` at `place`; its ink's tight box (None if none)."""
    from PIL import Image

    alpha = np.asarray(Image.fromarray(glyph, mode="F").resize((side, side), Image.Resampling.BILINEAR))
    alpha = np.clip(alpha, 0.0, 1.0)
    rows, columns = np.nonzero(alpha >= INK)
    if not len(rows):
        return None
    left, top = place
    region = pixels[top:top + side, left:left + side]
    region += alpha[..., None] * (colour - region)
    return (left + int(columns.min()), top + int(rows.min()), left + int(columns.max()) + 1,
            top + int(rows.max()) + 1)
