"""Tiny random-weight models built offline from configs, saved as segflow checkpoints.

For plumbing tests, benchmarks and the offline demo: they load through the
same code path as real weights. Random weights label nothing meaningful (and a
random YOLO only outputs boxes with a confidence threshold of 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["make_tiny_yolo", "make_tiny_sam", "make_tiny_mask2former", "make_tiny_maskrcnn"]


def make_tiny_yolo(path: str | Path, class_names: Sequence[str], seed: int = 0, cfg: str = "yolo11n-seg.yaml") -> Path:
    """A random ultralytics YOLO with ``class_names``, saved as a segflow YOLO checkpoint."""
    import torch

    import tasks.models.yolo  # noqa: F401 - sets offline ultralytics defaults
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    torch.manual_seed(seed)
    cls = SegmentationModel if "-seg" in cfg else DetectionModel
    model = cls(cfg, nc=len(class_names), verbose=False)
    model.names = {i: n for i, n in enumerate(class_names)}
    model.task = "segment" if cls is SegmentationModel else "detect"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tasks.models.yolo.save_yolo_checkpoint(model, path)
    return path


def make_tiny_sam(path: str | Path, seed: int = 0) -> Path:
    """A random ~0.8M-parameter SAM (256-px input), saved as a segflow SAM checkpoint."""
    import torch

    from tasks.models.sam import TINY_SAM_ARCH, build_sam, save_sam_checkpoint

    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_sam_checkpoint(build_sam(TINY_SAM_ARCH), TINY_SAM_ARCH, path)
    return path


def make_tiny_mask2former(path: str | Path, labels: Sequence[str], seed: int = 0, pretrained_dir: str | Path | None = None) -> Path:
    """A random ~1.7M-parameter Mask2Former (Swin backbone from a config object, no download), saved as a
    segflow checkpoint; with ``pretrained_dir`` also in the ``save_pretrained`` layout there."""
    import torch

    from tasks.models.mask2former import TINY_M2F_ARCH, build_mask2former, save_mask2former_checkpoint

    torch.manual_seed(seed)
    model, processor = build_mask2former(TINY_M2F_ARCH, labels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_mask2former_checkpoint(model, processor, path)
    if pretrained_dir is not None:
        model.save_pretrained(pretrained_dir)
        processor.save_pretrained(pretrained_dir)
    return path


def make_tiny_maskrcnn(path: str | Path, class_names: Sequence[str], seed: int = 0) -> Path:
    """A random small torchvision Mask R-CNN (ResNet-18 FPN, 128-256 px inputs), saved as a segflow checkpoint."""
    import torch

    from tasks.models.instances import build_maskrcnn, save_maskrcnn_checkpoint

    torch.manual_seed(seed)
    names = {0: "__background__", **{i + 1: n for i, n in enumerate(class_names)}}
    model = build_maskrcnn("resnet18_fpn", len(names), min_size=128, max_size=256)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_maskrcnn_checkpoint(model, "resnet18_fpn", names, path)
    return path
