"""A small anchor-free detector on any timm backbone (FCOS, Tian et al. ICCV 2019), so a student exists at every size.

Backbone features at strides 8, 16 and 32 (timm `features_only`) feed a small FPN and one head shared by the levels:
per location, class logits, the four distances to the box sides (left, top, right, bottom) and centerness. The
model takes a float RGB batch in [0, 1] (it normalizes inside, so host and device feed the letterboxed pixels
as they are) and its `forward` returns the raw export form of deploy/runner/detection.py: [B, A, 4 + C], boxes
xyxy in input pixels then class scores sqrt(sigmoid(class) * sigmoid(centerness)). Decoding and NMS happen after,
in numpy, on the host and the device alike.

`dense` gives what training and KD need: the FPN features, the class logits, the boxes and centerness per location.

Every detector of this task is a `DenseDetector`: this FCOS, torchvision's FCOS / RetinaNet / SSD
(compress.tasks.object_detection.torchvision_detectors) and a user's own (`package.module:factory`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from compress.tasks.object_detection.dense_detector import DenseDetector, DenseOutput

STRIDES = (8, 16, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_norm_relu(channels_in: int, channels_out: int) -> nn.Sequential:
    groups = math.gcd(channels_out, 16)
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
                         nn.GroupNorm(groups, channels_out), nn.ReLU(inplace=True))


class FPN(nn.Module):
    """Lateral 1x1 convolutions, a top-down pathway (nearest upsampling), a 3x3 convolution per level."""

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        return [conv(x) for conv, x in zip(self.output, laterals)]


class FCOSHead(nn.Module):
    """Towers shared by the levels; a learnable scale per level on the box distances (FCOS's `Scale`)."""

    def __init__(self, channels: int, num_classes: int, convs: int, levels: int):
        super().__init__()
        self.cls_tower = nn.Sequential(*[conv_norm_relu(channels, channels) for _ in range(convs)])
        self.box_tower = nn.Sequential(*[conv_norm_relu(channels, channels) for _ in range(convs)])
        self.cls = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.box = nn.Conv2d(channels, 4, 3, padding=1)
        self.ctr = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(levels))
        prior = 0.01  # the focal loss paper's prior: rare positives do not swamp the first steps
        nn.init.constant_(self.cls.bias, -math.log((1 - prior) / prior))
        for conv in (self.cls, self.box, self.ctr):
            nn.init.normal_(conv.weight, std=0.01)

    def forward(self, features: list[torch.Tensor], strides: tuple[int, ...]):
        cls, dist, ctr = [], [], []
        for level, (x, stride) in enumerate(zip(features, strides)):
            box_features = self.box_tower(x)
            cls.append(_flatten(self.cls(self.cls_tower(x))))
            dist.append(_flatten(F.relu(self.scales[level] * self.box(box_features))) * stride)
            ctr.append(_flatten(self.ctr(box_features))[..., 0])  # squeeze(-1) exports as an If on the dim
        return torch.cat(cls, 1), torch.cat(dist, 1), torch.cat(ctr, 1)


def _flatten(x: torch.Tensor) -> torch.Tensor:
    """[B, K, H, W] -> [B, H*W, K], row-major: the location order of deploy/runner/detection.py."""
    return x.flatten(2).transpose(1, 2)


class Detector(DenseDetector):
    """FCOS on a timm backbone, built here."""

    def __init__(self, backbone: str, num_classes: int, fpn_channels: int = 64, head_convs: int = 2,
                 backbone_kwargs: dict | None = None):
        super().__init__()
        import timm

        probe = timm.create_model(backbone, pretrained=False, features_only=True, **(backbone_kwargs or {}))
        reductions = probe.feature_info.reduction()
        indices = [reductions.index(s) for s in STRIDES]
        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=indices,
                                          **(backbone_kwargs or {}))
        self.fpn = FPN(self.backbone.feature_info.channels(), fpn_channels)
        self.head = FCOSHead(fpn_channels, num_classes, head_convs, len(STRIDES))
        self.fpn_channels = fpn_channels
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _probe(self) -> tuple[list[int], list[int]]:
        return list(STRIDES), [self.fpn_channels] * len(STRIDES)

    def dense(self, images: torch.Tensor) -> DenseOutput:
        features = self.fpn(self.backbone((images - self.mean) / self.std))
        cls, dist, ctr = self.head(features, STRIDES)
        shapes = [tuple(f.shape[-2:]) for f in features]
        points, strides = locations(shapes, STRIDES, images.device)
        boxes = torch.cat([points - dist[..., :2], points + dist[..., 2:]], -1)
        scores = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr).unsqueeze(-1))
        return DenseOutput(features, cls, boxes, scores, shapes, [1] * len(shapes), distances=dist, centerness=ctr,
                           points=points, strides=strides)

    def detection_loss(self, out: DenseOutput, targets: list[dict]) -> dict[str, torch.Tensor]:
        from compress.tasks.object_detection.fcos_loss import fcos_loss

        return fcos_loss(out, targets, self.num_classes)


def locations(sizes, strides, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre (x, y) of every location, level-major and row-major, and its level's stride."""
    points, level_strides = [], []
    for (height, width), stride in zip(sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(int(height), device=device), torch.arange(int(width), device=device),
                                indexing="ij")
        centre = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float() * stride + stride // 2
        points.append(centre)
        level_strides.append(torch.full((centre.shape[0],), float(stride), device=device))
    return torch.cat(points), torch.cat(level_strides)


def build_detector(name: str, num_classes: int, kwargs: dict) -> DenseDetector:
    """`fcos:BACKBONE` (any timm backbone with strides 8, 16, 32), `torchvision:NAME` (FCOS, RetinaNet, SSD) or
    `package.module:factory`: random weights, built offline (weights come from a checkpoint)."""
    from compress.models import _kwargs_error
    from compress.tasks.object_detection import torchvision_detectors

    try:
        if name.startswith("fcos:"):
            options = dict(kwargs)
            return Detector(name.split(":", 1)[1], num_classes, fpn_channels=options.pop("fpn_channels", 64),
                            head_convs=options.pop("head_convs", 2), backbone_kwargs=options)
        if name.startswith("torchvision:"):
            return torchvision_detectors.build_torchvision(name.split(":", 1)[1], num_classes, kwargs)
        return torchvision_detectors.build_from_factory(name, num_classes, kwargs)
    except TypeError as error:
        usage = _kwargs_error(name, error)
        if usage is None:
            raise
        raise usage from None


def check_detector_name(name: str) -> str | None:
    """Why `name` is not a detector this task builds; None when it is (no model is built)."""
    if name.startswith("fcos:"):
        import timm

        backbone = name.split(":", 1)[1]
        if not backbone:
            return "fcos:BACKBONE names a timm backbone, e.g. fcos:resnet18"
        if not timm.is_model(backbone):
            return f"'{backbone}' is not a timm model (timm.list_models() lists them)"
        return None
    from compress.tasks.object_detection import torchvision_detectors

    if name.startswith("torchvision:"):
        return torchvision_detectors.check_torchvision_name(name.split(":", 1)[1])
    if ":" in name and not name.startswith(("timm:", "hf:", "hf-config:")):
        return torchvision_detectors.check_factory_name(name)
    return (f"a detector is fcos:BACKBONE (a timm backbone, e.g. fcos:resnet18), torchvision:NAME (fcos_*, "
            f"retinanet_*, ssd*) or package.module:factory, not '{name}'")


def feature_levels(name: str, kwargs: dict) -> int | None:
    """How many feature levels detector `name` has (built on the meta device); None when it cannot be built."""
    if name.startswith("fcos:"):
        return len(STRIDES)
    if check_detector_name(name) is not None:
        return None
    try:
        with torch.device("meta"):
            return len(build_detector(name, 1, kwargs).strides)
    except Exception:  # a bad kwarg or factory: check_model names it
        return None


def input_size_problem(name: str, kwargs: dict, size: int) -> str | None:
    """Why detector `name` cannot take size x size inputs (its layers shrink them below a kernel: torchvision's
    SSD300 needs about 300 px); None when it can. Shapes only: on the meta device."""
    try:
        with torch.device("meta"):
            build_detector(name, 1, kwargs).level_features(torch.zeros(1, 3, size, size))
    except RuntimeError as error:
        return f"{size} px is too small for {name}: {str(error).splitlines()[0]}"
    return None


def save_detector(model: DenseDetector, spec: dict, path) -> None:
    """state_dict and the spec to rebuild it (loadable with weights_only=True)."""
    from compress.core.fileio import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"spec": spec, "state_dict": model.state_dict()}, tmp)


def read_checkpoint(path) -> dict:
    """A checkpoint file: this toolchain's {"spec", "state_dict"}, or a plain state_dict (torchvision's .pth)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def is_saved_detector(saved: dict) -> bool:
    return isinstance(saved, dict) and set(saved) >= {"spec", "state_dict"}


def load_detector(path) -> tuple[DenseDetector, dict]:
    saved = read_checkpoint(path)
    spec = saved["spec"]
    model = build_detector(spec["model"], spec["num_classes"], spec.get("kwargs", {}))
    model.load_state_dict(saved["state_dict"])
    return model.eval(), spec


def load_weights(model: DenseDetector, state: dict) -> list[str]:
    """Load a plain state_dict (a torchvision detector's file or one of a user's own) into `model`.

    Tensors whose shape differs from the model's (a class head for another number of classes) keep the model's
    fresh initialization and are returned, so the caller can say which layers still need training. Any other
    missing or unexpected key is an error naming it: the file is for another architecture.
    """
    target = getattr(model, "weights_root", model)
    own = target.state_dict()
    kept = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    reinitialized = sorted(k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape))
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    if unexpected or missing:
        key = (unexpected or missing)[0]
        kind = "is not a tensor of this model" if unexpected else "is missing from the file"
        raise ValueError(f"'{key}' {kind} ({len(unexpected)} unexpected, {len(missing)} missing keys): "
                         "the file holds another architecture")
    target.load_state_dict(kept, strict=False)
    return reinitialized
