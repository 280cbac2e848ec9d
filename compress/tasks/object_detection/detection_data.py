"""Detection records as a torch data set: letterboxed images and their boxes, augmented for training.

Images are opened one at a time in __getitem__, so memory stays flat however many images there are. Every
image goes through the same `letterbox` the device runs (deploy/runner/detection.py), so boxes learned here
are in the same pixels the deployed model sees. Training augmentation uses torchvision's v2 transforms on
tv_tensors, which move the boxes with the pixels; boxes that an affine jitter pushes off the canvas or
shrinks below MIN_BOX_PX are dropped with their labels rather than trained on as slivers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from compress.tasks.object_detection.detection_records import ImageRecord
from deploy.runner.detection import LETTERBOX_FILL, letterbox

MIN_BOX_PX = 2.0  # a box narrower than this after augmentation holds too few pixels to learn from
QUADRANTS = ((0, 0), (1, 0), (0, 1), (1, 1))  # mosaic tiles as (column, row)

Target = dict[str, Any]


@dataclass(frozen=True)
class Augment:
    """Training augmentation. `scale` and `translate` are v2.RandomAffine's (translate as a fraction of the
    canvas); `color` is the brightness, contrast and saturation jitter; `mosaic` the probability that an
    item is four images tiled at half size (more objects per image, and smaller ones)."""

    flip: bool = True
    scale: tuple = (0.75, 1.25)
    translate: float = 0.1
    color: float = 0.2
    mosaic: float = 0.0


def train_transforms(augment: Augment):
    """The v2 pipeline for one {"image", "boxes", "labels"} sample; boxes are clamped to the canvas and then
    sanitized so that labels stay in step with the boxes that survive."""
    from torchvision.transforms import v2

    steps = []
    if augment.flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if tuple(augment.scale) != (1.0, 1.0) or augment.translate > 0:
        steps.append(v2.RandomAffine(degrees=0, translate=(augment.translate, augment.translate),
                                     scale=tuple(augment.scale), interpolation=v2.InterpolationMode.BILINEAR,
                                     fill=LETTERBOX_FILL / 255.0))
    if augment.color > 0:
        steps.append(v2.ColorJitter(brightness=augment.color, contrast=augment.color, saturation=augment.color))
    steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=MIN_BOX_PX, labels_getter=_labels_of)]
    return v2.Compose(steps)


def _labels_of(sample: dict[str, Any]) -> torch.Tensor:
    """SanitizeBoundingBoxes' labels_getter: named, not guessed, and a module function so workers can pickle it."""
    return sample["labels"]


class DetectionDataset(Dataset):
    """(image float32 [3, size, size] in [0, 1], target) per record; target is {"boxes": float32 [N, 4] xyxy in
    letterboxed pixels, "labels": int64 [N], "image_id": int, "scale": float} (original = letterboxed / scale)."""

    def __init__(self, records: Sequence[ImageRecord], size: int, train: bool = False,
                 augment: Augment | None = None):
        self.records = list(records)
        self.size = size
        self.train = train
        self.augment = (augment or Augment()) if train else None
        self.transform = train_transforms(self.augment) if train else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        record = self.records[index]
        if self.augment is not None and self.augment.mosaic > 0 and float(torch.rand(())) < self.augment.mosaic:
            image, boxes, labels, scale = self._mosaic(index)
        else:
            image, boxes, labels, scale = letterboxed(record, self.size)
        if self.transform is not None:
            image, boxes, labels = self._augmented(image, boxes, labels)
        return image, {"boxes": boxes, "labels": labels, "image_id": record.image_id, "scale": scale}

    def _mosaic(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Item `index` and three random others, each letterboxed to half the canvas, one per quadrant. The
        scale reported is item `index`'s; a mosaic is never scored against original pixels."""
        half = self.size // 2
        canvas = torch.full((3, self.size, self.size), LETTERBOX_FILL / 255.0)
        others = torch.randint(len(self.records), (3,)).tolist()
        all_boxes, all_labels, scales = [], [], []
        for (column, row), which in zip(QUADRANTS, [index] + others):
            image, boxes, labels, scale = letterboxed(self.records[which], half)
            left, top = column * half, row * half
            canvas[:, top:top + half, left:left + half] = image
            all_boxes.append(boxes + torch.tensor([left, top, left, top], dtype=torch.float32))
            all_labels.append(labels)
            scales.append(scale)
        return canvas, torch.cat(all_boxes), torch.cat(all_labels), scales[0]

    def _augmented(self, image: torch.Tensor, boxes: torch.Tensor,
                   labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors

        sample = {"image": tv_tensors.Image(image),
                  "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(self.size, self.size)),
                  "labels": labels}
        out = self.transform(sample)
        return (out["image"].as_subclass(torch.Tensor).clamp_(0.0, 1.0).contiguous(),
                out["boxes"].as_subclass(torch.Tensor).float(), out["labels"])


def letterboxed(record: ImageRecord, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(image [3, size, size], boxes in letterboxed pixels, labels, scale) of one record, decoded now."""
    from PIL import Image

    with Image.open(record.path) as image:
        pixels, scale = letterbox(image, size)
    boxes = torch.from_numpy(np.asarray(record.boxes, np.float32).reshape(-1, 4) * scale).clamp_(0.0, float(size))
    labels = torch.from_numpy(np.asarray(record.labels, np.int64).reshape(-1))
    return torch.from_numpy(pixels), boxes, labels, float(scale)


def collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Images stacked into [B, 3, S, S]; targets kept as a list, since each image has its own number of boxes."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def make_loader(records: Sequence[ImageRecord], size: int, batch_size: int, train: bool,
                augment: Augment | None = None, seed: int = 0, workers: int = 0) -> DataLoader:
    """Batches of (images, targets). Training shuffles with a generator seeded by `seed`, so the order
    repeats run to run; with workers, each worker's torch RNG (which the augmentation draws from) is seeded
    from that generator too."""
    dataset = DetectionDataset(records, size, train=train, augment=augment)
    generator = torch.Generator().manual_seed(seed) if train else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, generator=generator, num_workers=workers,
                      collate_fn=collate, persistent_workers=workers > 0)
