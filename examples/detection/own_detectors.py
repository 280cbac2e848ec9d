"""Detectors of your own, named `own_detectors:FACTORY` in teacher.model / student.model.

`compress run` puts the folder of pipeline.yaml on the import path, so a module beside it is found. A factory
takes `num_classes` (and the model section's kwargs) and returns a torchvision FCOS, RetinaNet or SSD (an SSD with
num_classes + 1 classes, background first, as torchvision counts them), which the toolchain runs per location, or
a `compress.tasks.object_detection.dense_detector.DenseDetector` of your own.

These two are torchvision's FCOS and RetinaNet on a ResNet-18 FPN of any width: the same heads and losses as
torchvision's ResNet-50 builders at a fraction of their size. Their weights start random; give a state_dict file
in `checkpoint` to start from trained ones.
"""

from __future__ import annotations


def resnet18_fpn(channels: int):
    """ResNet-18's stages at strides 8, 16, 32 through an FPN, plus P6 and P7 (strides 64, 128)."""
    from torchvision.models import resnet18
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    return BackboneWithFPN(resnet18(weights=None), {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512],
                           channels, extra_blocks=LastLevelP6P7(channels, channels))


def fcos_resnet18(num_classes: int, channels: int = 64):
    from torchvision.models.detection import FCOS

    return FCOS(resnet18_fpn(channels), num_classes)


def retinanet_resnet18(num_classes: int, channels: int = 64, anchor_size: int = 32):
    """RetinaNet's 9 anchors per location (3 sizes x 3 aspect ratios); `anchor_size` is the smallest, on the
    stride-8 level (torchvision's 32 suits COCO; small objects want smaller), doubling per level."""
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple(tuple(int(anchor_size * 2 ** level * 2 ** (step / 3)) for step in range(3)) for level in range(5))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    return RetinaNet(resnet18_fpn(channels), num_classes, anchor_generator=anchors)
