"""Image pipelines with torchvision.transforms.v2: the training augmentation and the evaluation steps.

The evaluation steps are also data (`eval_spec`): the run records them and every bundle ships
them, so a device repeats them on raw image files with Pillow and numpy alone
(deploy/runner/preprocess.py). Resize and crop run on PIL images, where torchvision calls PIL's own
resize, so host and device compute the same pixels; only the float normalisation is redone.
"""

from __future__ import annotations

from typing import Any

import torch

from compress.config import AugmentConfig, DataConfig

INTERPOLATION = "bilinear"


def eval_spec(cfg: DataConfig, channels: int, size: tuple[int, int] | None) -> dict[str, Any]:
    """{"mode", "resize", "crop", "interpolation"}: `size` (w, h) is the images' own when data.image_size is unset.

    data.image_size S alone resizes to S x S (no crop); with data.eval_resize R the shorter side
    goes to R and the centre S x S is cut out (timm's and torchvision's evaluation of ImageNet).
    """
    mode = "L" if channels == 1 else "RGB"
    if cfg.image_size is None:
        if size is None:
            raise ValueError("images differ in size")
        return {"mode": mode, "resize": None, "crop": None, "interpolation": INTERPOLATION, "size": [size[1], size[0]]}
    square = [cfg.image_size, cfg.image_size]
    if cfg.eval_resize is None:
        return {"mode": mode, "resize": square, "crop": None, "interpolation": INTERPOLATION, "size": square}
    return {"mode": mode, "resize": cfg.eval_resize, "crop": square, "interpolation": INTERPOLATION, "size": square}


def to_tensor(mean: list[float], std: list[float]):
    """PIL image -> normalised float32 CHW tensor."""
    from torchvision.transforms import v2

    return v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def geometry(spec: dict[str, Any]):
    """The resize and crop of an eval spec, on PIL images (exactly what the device does)."""
    from torchvision.transforms import v2

    steps = []
    if spec.get("resize") is not None:
        steps.append(v2.Resize(spec["resize"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True))
    if spec.get("crop") is not None:
        steps.append(v2.CenterCrop(spec["crop"]))
    return v2.Compose(steps) if steps else v2.Identity()


def eval_transform(spec: dict[str, Any], mean: list[float], std: list[float]):
    """Raw PIL image -> the tensor every stage evaluates on (and the device's preprocess reproduces)."""
    from torchvision.transforms import v2

    return v2.Compose([ConvertMode(spec["mode"]), geometry(spec), to_tensor(mean, std)])


def train_transform(spec: dict[str, Any], augment: AugmentConfig | None, mean: list[float], std: list[float]):
    """The training pipeline: the eval geometry, or a random resized crop, then flips, colour, RandAugment."""
    from torchvision.transforms import v2

    if augment is None:
        return eval_transform(spec, mean, std)
    height, width = spec["size"]
    steps: list[Any] = [ConvertMode(spec["mode"])]
    if augment.random_resized_crop:
        steps.append(v2.RandomResizedCrop((height, width), scale=tuple(augment.crop_scale), antialias=True))
    else:
        steps.append(geometry(spec))
    if augment.flip:
        steps.append(v2.RandomHorizontalFlip())
    if augment.color_jitter:
        steps.append(v2.ColorJitter(augment.color_jitter, augment.color_jitter, augment.color_jitter))
    if augment.randaugment:
        steps.append(v2.RandAugment(num_ops=augment.randaugment_ops, magnitude=augment.randaugment_magnitude))
    steps.append(to_tensor(mean, std))
    return v2.Compose(steps)


def batch_mixer(augment: AugmentConfig | None, num_classes: int):
    """MixUp and/or CutMix over a batch (one of them per batch when both are on); None when neither is."""
    if augment is None or not (augment.mixup or augment.cutmix):
        return None
    return BatchMixer(num_classes, augment.mixup, augment.cutmix)


class BatchMixer:
    """torchvision's MixUp / CutMix on (inputs, labels) -> (mixed inputs, (N, K) soft labels).

    A transfer-set input (label NO_LABEL, -1) lends its pixels but no label mass: torchvision is
    given one class more for it, dropped afterwards, so a row mixed from two such inputs has soft
    labels of zero (the KD losses still learn from it; cross-entropy does not).
    """

    def __init__(self, num_classes: int, mixup: float, cutmix: float):
        from torchvision.transforms import v2

        self.num_classes = num_classes
        mixers = ([v2.MixUp(alpha=mixup, num_classes=num_classes + 1)] if mixup else []) + \
            ([v2.CutMix(alpha=cutmix, num_classes=num_classes + 1)] if cutmix else [])
        self.mix = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, soft = self.mix(x, torch.where(labels < 0, self.num_classes, labels))
        return x, soft[:, :self.num_classes]


class ConvertMode(torch.nn.Module):
    """PIL's convert to "L" or "RGB" (palette, alpha and CMYK images included)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, image):
        return image if image.mode == self.mode else image.convert(self.mode)
