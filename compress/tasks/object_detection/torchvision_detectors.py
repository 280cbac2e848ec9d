"""torchvision's one-stage detectors (FCOS, RetinaNet, SSD / SSDlite) and a user's own, as DenseDetectors.

torchvision's detectors resize and normalize inside (`GeneralizedRCNNTransform`) and return boxes after NMS, which
neither KD nor an engine can use. Here the letterboxed batch goes straight to the network's own backbone, head,
anchor generator and box coder, so the outputs are per location, in the input's pixels, and the export form is the
one every other detector of this task has. Training uses the network's own `compute_loss` (its matcher, focal /
GIoU / centerness or SSD's hard-negative mining), so a torchvision detector trains here as it does in torchvision.

Nothing is downloaded: the builders get `weights=None, weights_backbone=None`; weights come from a local file
(`teacher.checkpoint` / `student.checkpoint`, for example torchvision's own .pth, class heads of another size
re-initialized). Two-stage detectors (Faster / Mask / Keypoint R-CNN) have no dense head to distil or export in
one graph and are refused.
"""

from __future__ import annotations

import importlib
import typing

import torch

from compress.core.errors import UsageError
from compress.tasks.object_detection.dense_detector import DenseDetector, DenseOutput

FAMILIES = ("fcos", "retinanet", "ssd")
DOWNLOADED = ("weights", "weights_backbone", "num_classes")


def _family_of_class(cls) -> str | None:
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD

    for family, base in (("fcos", FCOS), ("retinanet", RetinaNet), ("ssd", SSD)):
        if isinstance(cls, type) and issubclass(cls, base):
            return family
    return None


def detection_model_names() -> list[str]:
    import torchvision.models as tvm
    from torchvision.models import detection

    return tvm.list_models(module=detection)


def check_torchvision_name(arch: str) -> str | None:
    names = detection_model_names()
    if arch not in names:
        dense = [n for n in names if _family_of_class(_builder_class(n))]
        return f"'{arch}' is not a torchvision detector; the one-stage ones are {', '.join(dense)}"
    if _family_of_class(_builder_class(arch)) is None:
        return (f"torchvision:{arch} is a two-stage detector (region proposals, then per-region heads): it has no "
                "dense per-location head to distil or export in one graph; use fcos_*, retinanet_* or ssd*")
    return None


def _builder_class(arch: str):
    import torchvision.models as tvm

    return typing.get_type_hints(tvm.get_model_builder(arch)).get("return")


def build_torchvision(arch: str, num_classes: int, kwargs: dict) -> "TorchvisionDetector":
    import torchvision.models as tvm

    from compress.models import accepted_kwargs

    problem = check_torchvision_name(arch)
    if problem:
        raise UsageError(problem)
    for key in DOWNLOADED:
        if key in kwargs:
            why = ("set from the data" if key == "num_classes" else
                   "weights come from a local file (teacher.checkpoint / student.checkpoint); nothing is downloaded")
            raise UsageError(f"model 'torchvision:{arch}': kwargs.{key}: {why}")
    takes = [k for k in accepted_kwargs(f"torchvision:{arch}")[0] if k not in DOWNLOADED]
    unknown = [k for k in kwargs if k not in takes]
    if unknown:  # torchvision's transform swallows unknown keywords: refuse them here
        raise UsageError(f"model 'torchvision:{arch}': kwargs.{unknown[0]}: it takes {', '.join(takes)}")
    family = _family_of_class(_builder_class(arch))
    classes = num_classes + 1 if family == "ssd" else num_classes  # SSD's softmax has a background class first
    net = tvm.get_model(arch, weights=None, weights_backbone=None, num_classes=classes, **kwargs)
    return TorchvisionDetector(net, family, num_classes)


def check_factory_name(name: str) -> str | None:
    from compress.models import check_model_name

    return check_model_name(name)


def build_from_factory(name: str, num_classes: int, kwargs: dict) -> DenseDetector:
    """A user's `package.module:factory(num_classes=..., **kwargs)`: a DenseDetector, or a torchvision FCOS,
    RetinaNet or SSD (wrapped here; an SSD has num_classes + 1 classes, background first, as in torchvision)."""
    from compress.models import _call_with_supported

    problem = check_factory_name(name)
    if problem:
        raise UsageError(problem)
    module_name, _, attr = name.partition(":")
    built = _call_with_supported(getattr(importlib.import_module(module_name), attr), dict(kwargs),
                                 {"num_classes": num_classes})
    if isinstance(built, DenseDetector):
        if getattr(built, "num_classes", None) != num_classes:
            raise UsageError(f"{name} built a detector of {getattr(built, 'num_classes', None)} classes; the data "
                             f"has {num_classes}")
        return built
    family = _family_of_class(type(built))
    if family is None:
        raise UsageError(f"{name} returned a {type(built).__name__}: a detector factory returns a torchvision FCOS, "
                         "RetinaNet or SSD, or a compress.tasks.object_detection.dense_detector.DenseDetector")
    head_classes = _head_classes(built, family)
    wanted = num_classes + 1 if family == "ssd" else num_classes
    if head_classes != wanted:
        extra = " (num_classes + 1: background first, torchvision's convention)" if family == "ssd" else ""
        raise UsageError(f"{name} built a {type(built).__name__} whose head has {head_classes} classes; the data "
                         f"needs {wanted}{extra}")
    return TorchvisionDetector(built, family, num_classes)


def _head_classes(net, family: str) -> int | None:
    head = net.head.classification_head
    return getattr(head, "num_columns" if family == "ssd" else "num_classes", None)


class TorchvisionDetector(DenseDetector):
    """A torchvision one-stage detector run on letterboxed [0, 1] pixels, per location."""

    def __init__(self, net, family: str, num_classes: int):
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"family {family!r}: one of {FAMILIES}")
        self.net, self.family, self.num_classes = net, family, num_classes
        transform = net.transform
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(transform.image_std).view(1, 3, 1, 1), persistent=False)

    @property
    def weights_root(self):
        """The module a torchvision state_dict file fits (load_weights)."""
        return self.net

    def level_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.net.backbone((images - self.mean) / self.std)
        return [features] if isinstance(features, torch.Tensor) else list(features.values())

    def _anchors(self, images: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """The anchors of one image (the same for every image of a batch), computed once per input size."""
        from torchvision.models.detection.image_list import ImageList

        size = (int(images.shape[-2]), int(images.shape[-1]))
        key = (size, tuple(tuple(int(x) for x in f.shape[-2:]) for f in features), str(images.device))
        cache = self.__dict__.setdefault("_anchor_cache", {})
        if key not in cache:
            with torch.no_grad():
                cache[key] = self.net.anchor_generator(ImageList(images[:1].detach(), [size]),
                                                       [f[:1].detach() for f in features])[0]
        return cache[key]

    def anchors_per_location(self, levels: int) -> list[int]:
        if self.family == "fcos":
            return [1] * levels
        return [int(n) for n in self.net.anchor_generator.num_anchors_per_location()][:levels]

    def dense(self, images: torch.Tensor) -> DenseOutput:
        features = self.level_features(images)
        head = self.net.head(features)
        anchors = self._anchors(images, features)
        batch = images.shape[0]
        regression = head["bbox_regression"]
        batch_anchors = anchors.unsqueeze(0).expand(batch, -1, -1)
        centerness = None
        if self.family == "fcos":
            boxes = self.net.box_coder.decode(regression, batch_anchors)
            cls = head["cls_logits"]
            centerness = head["bbox_ctrness"][..., 0]
            scores = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(centerness).unsqueeze(-1))
        else:
            boxes = self.net.box_coder.decode_single(regression.reshape(-1, 4),
                                                     batch_anchors.reshape(-1, 4)).reshape(batch, -1, 4)
            if self.family == "ssd":
                scores = torch.softmax(head["cls_logits"], -1)[..., 1:]
                cls = torch.logit(scores, eps=1e-6)
            else:
                cls = head["cls_logits"]
                scores = torch.sigmoid(cls)
        shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        return DenseOutput(features, cls, boxes, scores, shapes, self.anchors_per_location(len(features)),
                           centerness=centerness, extras={"head": head, "anchors": anchors})

    def detection_loss(self, out: DenseOutput, targets: list[dict]) -> dict[str, torch.Tensor]:
        head, anchors = out.extras["head"], out.extras["anchors"]
        per_image = [anchors] * len(targets)
        if self.family == "fcos":
            counts = [h * w * k for (h, w), k in zip(out.level_shapes, out.anchors_per_location)]
            losses = self.net.compute_loss(targets, head, per_image, counts)
        elif self.family == "retinanet":
            losses = self.net.compute_loss(targets, head, per_image)
        else:
            losses = self._ssd_loss(targets, head, per_image)
        return {**losses, "total": sum(losses.values())}

    def _ssd_loss(self, targets, head, anchors) -> dict[str, torch.Tensor]:
        """SSD.forward's matching (torchvision), then its loss; labels shifted past the background class."""
        from torchvision.ops import box_iou

        shifted = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
        matched = []
        for anchors_of_image, target in zip(anchors, shifted):
            if target["boxes"].numel() == 0:
                matched.append(torch.full((anchors_of_image.shape[0],), -1, dtype=torch.int64,
                                          device=anchors_of_image.device))
            else:
                matched.append(self.net.proposal_matcher(box_iou(target["boxes"], anchors_of_image)))
        return self.net.compute_loss(shifted, head, anchors, matched)
