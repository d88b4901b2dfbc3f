"""Direct instance labelers: images -> boxes, classes, scores *and* masks in one model.

They produce the same :class:`~segflow.tasks.record.Detections` as detector -> SAM, so
the rest of the pipeline (QC, panoptic merge, manifests, COCO, gold-set
audits) treats them alike, and a user can compare them on a gold set.

* ``yolo_seg`` -- an ultralytics YOLO segmentation checkpoint (segflow format,
  see :mod:`segflow.tasks.stages.yolo`). Masks come at the original image size
  (``retina_masks``); every array is filtered together, so a class never
  drifts to another row's mask (unlike ``auto_annotate``).
* ``maskrcnn`` -- torchvision Mask R-CNN. Weights: torchvision's own COCO
  state dicts (``maskrcnn_resnet50_fpn_coco-*.pth``, plain tensors; COCO names
  from torchvision's metadata, no download) or a segflow checkpoint
  ``{"format": "segflow.maskrcnn/1", "arch", "names", "min_size",
  "max_size", "state_dict"}`` (:func:`save_maskrcnn_checkpoint`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segflow.tasks import rle
from segflow.tasks.io.weights import WeightsError, build_to_fit, load_checkpoint
from segflow.tasks.record import Detections
from segflow.tasks.stages.device import resolve_device
from segflow.tasks.stages.yolo import YoloDetector

if TYPE_CHECKING:
    from segflow.tasks.stages.settings.instances import MaskRcnnStage, YoloSegStage


__all__ = ["YoloSegLabeler", "MaskRcnnLabeler", "build_maskrcnn", "save_maskrcnn_checkpoint", "MASKRCNN_FORMAT"]

MASKRCNN_FORMAT = "segflow.maskrcnn/1"


def _class_lookup(names: dict[int, str], ontology: dict[int, str], class_map: dict[str, str]) -> np.ndarray:
    """Model class index -> ontology id (-1 = not in the ontology)."""
    by_name = {v: k for k, v in ontology.items()}
    lookup = np.full(max(names) + 1 if names else 1, -1, dtype=np.int64)
    for cid, cname in names.items():
        target = class_map.get(cname, cname)
        if target in by_name:
            lookup[cid] = by_name[target]
    return lookup


class YoloSegLabeler(YoloDetector):
    """``yolo_seg``: ultralytics YOLO-seg boxes and masks, filtered together."""

    role = "instances"

    def __init__(self, stage: YoloSegStage, weights_path: str, ontology: dict[int, str]):
        super().__init__(stage, weights_path, ontology)
        if getattr(self.model, "task", None) != "segment":
            raise WeightsError(
                f"{weights_path}: a 'yolo_seg' stage needs a segmentation checkpoint (task "
                f"'segment'), got task {getattr(self.model, 'task', None)!r}"
            )

    def label(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Instances of each image (H x W x 3 uint8 RGB): boxes XYXY pixels, ontology ids, scores, RLE masks."""
        out: list[Detections] = []
        for batch, results in self._predict(images, retina_masks=True):
            for im, r in zip(batch, results):
                h, w = im.shape[:2]
                boxes = r.boxes.xyxy.cpu().numpy().astype(np.float32)
                boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
                boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
                cls = r.boxes.cls.cpu().numpy().astype(np.int64)
                onto = self.class_lookup[np.clip(cls, 0, len(self.class_lookup) - 1)] if len(cls) else cls
                if r.masks is not None and len(cls):
                    masks = r.masks.data  # N x H x W at the original size (retina_masks)
                    if tuple(masks.shape[1:]) != (h, w):  # pragma: no cover - retina_masks guarantees it
                        raise RuntimeError(f"yolo_seg: masks of size {tuple(masks.shape[1:])} for an image of {(h, w)}")
                    counts = rle.encode_nwh((masks > 0.5).transpose(1, 2).contiguous().cpu().numpy())
                else:
                    counts = []
                dets = Detections((h, w), boxes, onto, r.boxes.conf.cpu().numpy().astype(np.float32)).with_masks(counts)
                keep = dets.class_ids >= 0
                if len(dets):
                    keep &= dets.mask_areas() > 0
                out.append(dets[keep])
        return out


# -- Mask R-CNN ---------------------------------------------------------------------------------


MASKRCNN_ARCHS = ("resnet50_fpn", "resnet50_fpn_v2", "resnet18_fpn")


def build_maskrcnn(arch: str, num_classes: int, min_size: int = 800, max_size: int = 1333) -> Any:
    """A randomly initialised torchvision Mask R-CNN (``resnet50_fpn``, ``resnet50_fpn_v2`` or the small
    ``resnet18_fpn``)."""
    import torchvision
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    if arch == "resnet50_fpn":
        return torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size, max_size=max_size
        )
    if arch == "resnet50_fpn_v2":
        return torchvision.models.detection.maskrcnn_resnet50_fpn_v2(
            weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size, max_size=max_size
        )
    if arch == "resnet18_fpn":  # small: ResNet-18 FPN and a 256-wide box head (~15M parameters)
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

        backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
        return MaskRCNN(
            backbone,
            min_size=min_size,
            max_size=max_size,
            box_head=TwoMLPHead(backbone.out_channels * 7 * 7, 256),
            box_predictor=FastRCNNPredictor(256, num_classes),
            mask_predictor=MaskRCNNPredictor(256, 256, num_classes),
        )
    raise WeightsError(f"unknown Mask R-CNN arch {arch!r} (resnet50_fpn, resnet50_fpn_v2, resnet18_fpn)")


def save_maskrcnn_checkpoint(
    model: Any, arch: str, names: dict[int, str], path: str | Path, half: bool = False
) -> None:
    """Write a Mask R-CNN as a weights-only segflow checkpoint (``names``: class index -> name, 0 = background).

    ``half``: floating-point tensors stored as float16 (half the file; loaded back into float32).
    """
    import torch

    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if half:
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    torch.save(
        {
            "format": MASKRCNN_FORMAT,
            "arch": arch,
            "names": {int(k): str(v) for k, v in names.items()},
            "min_size": int(model.transform.min_size[0]),
            "max_size": int(model.transform.max_size),
            "state_dict": sd,
        },
        str(path),
    )


def _load_maskrcnn(weights: str) -> tuple[Any, dict[int, str]]:
    ckpt = load_checkpoint(weights)
    if not isinstance(ckpt, dict):
        raise WeightsError(f"{weights}: expected a state dict or a segflow Mask R-CNN checkpoint")
    if ckpt.get("format") == MASKRCNN_FORMAT:
        names = {int(k): str(v) for k, v in ckpt["names"].items()}
        sizes = (ckpt.get("min_size", 800), ckpt.get("max_size", 1333))
        if ckpt.get("arch") not in MASKRCNN_ARCHS or not names or not all(isinstance(v, int) for v in sizes):
            raise WeightsError(f"{weights}: the checkpoint's arch must be one of {', '.join(MASKRCNN_ARCHS)}")
        sd = ckpt["state_dict"]
        model = build_to_fit(lambda: build_maskrcnn(ckpt["arch"], max(names) + 1, *sizes), sd, weights, "Mask R-CNN")
    else:  # torchvision's COCO files: plain state dicts
        from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights, MaskRCNN_ResNet50_FPN_Weights

        sd = ckpt
        v2 = any(k.startswith("rpn.head.conv.0.") for k in sd)
        meta = (MaskRCNN_ResNet50_FPN_V2_Weights if v2 else MaskRCNN_ResNet50_FPN_Weights).COCO_V1.meta["categories"]
        names = {i: n for i, n in enumerate(meta) if n != "N/A"}
        model = build_maskrcnn("resnet50_fpn_v2" if v2 else "resnet50_fpn", len(meta))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{weights}: weights do not fit Mask R-CNN: {str(e).splitlines()[0]}") from None
    return model.eval(), names


class MaskRcnnLabeler:
    """``maskrcnn``: torchvision Mask R-CNN boxes, classes, scores and masks."""

    role = "instances"

    def __init__(self, stage: MaskRcnnStage, weights_path: str, ontology: dict[int, str]):
        import torch

        self.stage = stage
        self.device = torch.device(resolve_device(stage.device))
        model, names = _load_maskrcnn(weights_path)
        model.roi_heads.score_thresh = float(stage.conf)
        model.roi_heads.detections_per_img = int(stage.max_det)
        self.model = model.to(self.device)
        self.model_names = names
        self.class_lookup = _class_lookup(names, ontology, dict(stage.class_map))
        self.mask_threshold = float(stage.mask_threshold)
        self._lock = threading.Lock()

    def label(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Instances of each image (H x W x 3 uint8 RGB): boxes XYXY pixels, ontology ids, scores, RLE masks."""
        import torch

        out: list[Detections] = []
        bs = self.stage.batch_size
        with self._lock, torch.inference_mode():
            for start in range(0, len(images), bs):
                batch = images[start : start + bs]
                tensors = [
                    torch.from_numpy(np.array(im, copy=True)).to(self.device).permute(2, 0, 1).float() / 255.0
                    for im in batch
                ]
                for im, r in zip(
                    batch, self.model(tensors)
                ):  # torchvision resizes inside and pastes masks back at the input size
                    h, w = im.shape[:2]
                    labels = r["labels"].cpu().numpy().astype(np.int64)
                    onto = self.class_lookup[np.clip(labels, 0, len(self.class_lookup) - 1)] if len(labels) else labels
                    masks = (
                        (r["masks"][:, 0] > self.mask_threshold).transpose(1, 2).contiguous().cpu().numpy()
                    )  # N x W x H
                    boxes = (
                        r["boxes"].cpu().numpy().astype(np.float32)
                    )  # rescaled from the resized frame: float error past the edge
                    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
                    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
                    dets = Detections((h, w), boxes, onto, r["scores"].cpu().numpy().astype(np.float32))
                    dets = dets.with_masks(rle.encode_nwh(masks))
                    keep = dets.class_ids >= 0
                    if len(dets):
                        keep &= dets.mask_areas() > 0
                    out.append(dets[keep])
        return out
